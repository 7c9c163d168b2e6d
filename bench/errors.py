"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class BenchError(Exception):
    """An error the user can fix; the CLI prints it as one line."""

    exit_code = 2


class ManifestError(BenchError):
    """The manifest (shipped or the user's own) is malformed or names an unknown model."""


class FetchError(BenchError):
    """A model file could not be downloaded or located."""


class ChecksumError(FetchError):
    """A file's sha256 differs from the manifest or the lock file: the file is not used."""


class EngineError(BenchError):
    """The inference engine cannot run as asked (e.g. GPU asked for on a CPU-only build)."""


class ScoringError(BenchError):
    """Outputs could not be scored (bad input file, missing model for a metric)."""


class RunDirError(BenchError):
    """A run directory is missing, incomplete or of an unknown schema version."""
