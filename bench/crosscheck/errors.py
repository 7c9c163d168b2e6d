"""Why one configuration's cross-check stopped. Each prints as one line; the others go on."""

from __future__ import annotations

from bench.errors import BenchError


class CrosscheckError(BenchError):
    """A configuration could not be cross-checked (the message says which step and why)."""


class ServerUnreachable(CrosscheckError):
    """Nothing answers at the server URL (refused, unknown host, connect timeout)."""


class ModelMissing(CrosscheckError):
    """The server does not have the model asked for, or the run's model file is gone."""


class CreateFailed(CrosscheckError):
    """Ollama could not take the GGUF (blob upload, /api/create or /api/pull failed)."""


class RequestTimedOut(CrosscheckError):
    """A request ran past --timeout."""


class ServerError(CrosscheckError):
    """The server answered a request with an error or a malformed stream."""
