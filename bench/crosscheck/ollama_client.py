"""Ollama, through its official Python client: serve the run's own GGUF and time the run's prompts.

Why /api/generate with `raw: true` and not /api/chat: /api/chat renders messages with Ollama's Go
template (converted from the GGUF's Jinja template, not always to the same text), so the two sides
would tokenize different prompts. A raw prompt is the exact string our engine rendered and decoded.

The model is created from the local file (blob upload, then /api/create with `files`), named after
the config and the file's sha256, so Ollama answers with the very bytes the in-process run loaded.
`--pull` asks for Ollama's own tag instead; whether that is the same file is read from /api/show.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Iterator

import httpx

from bench.crosscheck.errors import CreateFailed, ModelMissing, RequestTimedOut, ServerError, ServerUnreachable
from bench.crosscheck.server import TOP_K, TOP_P, PreparedModel, ServerReply, ServerRequest, StreamClock, normalize_url, one_line

DEFAULT_URL = "http://127.0.0.1:11434"
DEFAULT_KEEP_ALIVE = "30m"  # long enough that no timed request pays a reload
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$")
_FROM_BLOB = re.compile(r"sha256[-:]([0-9a-f]{64})")


def ollama_model_name(config_id: str, sha256: str) -> str:
    """A valid Ollama name that says which configuration and which file: bench-<id>:<sha256[:12]>."""
    base = re.sub(r"[^a-z0-9._-]+", "-", config_id.lower()).strip("-._") or "model"
    return f"bench-{base}:{sha256[:12]}"


def ollama_options(request: ServerRequest) -> dict[str, Any]:
    """Ollama options matched to the in-process run. num_ctx is always explicit: Ollama's default
    grows with the GPU's memory (4k to 256k) and the context size changes speed and memory."""
    options: dict[str, Any] = {
        "temperature": request.temperature,
        "seed": request.seed,
        "num_predict": request.max_tokens,
        "num_ctx": request.num_ctx,
        "top_k": TOP_K,
        "top_p": TOP_P,
        "min_p": 0.0,
        # Ollama's defaults penalise repeats (repeat_penalty 1.1); our engine does not.
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    if request.cpu_only:
        options["num_gpu"] = 0
    if request.num_thread:
        options["num_thread"] = request.num_thread
    return options


class OllamaClient:
    kind = "ollama"

    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float = 300.0, pull: bool = False,
                 keep_alive: str = DEFAULT_KEEP_ALIVE):
        import ollama

        self._ollama = ollama
        self.url = normalize_url(url, default_port=11434)
        self.timeout_s = timeout_s
        self.pull = pull
        self.keep_alive = keep_alive
        self._client = ollama.Client(host=self.url, timeout=timeout_s)
        # /api/version and HEAD /api/blobs are not in the Python client; same URL, same timeout.
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()
        self._http.close()

    # -- errors ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise ModelMissing(f"{what}: Ollama says: {exc.error}") from None
            status = f" ({exc.status_code})" if exc.status_code and exc.status_code > 0 else ""
            raise ServerError(f"{what}: Ollama answered with an error{status}: {exc.error}") from None
        except (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError) as exc:
            raise ServerUnreachable(f"cannot reach Ollama at {self.url} ({_reason(exc)})") from None
        except httpx.TimeoutException:
            raise RequestTimedOut(f"{what}: no answer from Ollama within --timeout {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ServerError(f"{what}: {one_line(exc)}") from None

    # -- server ----------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        with self._errors("GET /api/version"):
            response = self._http.get("/api/version")
            response.raise_for_status()
        try:
            version = response.json().get("version")
        except ValueError:
            version = None
        return {"kind": self.kind, "url": self.url, "version": version, "client": f"ollama-python {_client_version()}"}

    # -- models ----------------------------------------------------------------------------------

    def prepare(self, config) -> PreparedModel:
        return self._prepare_pull(config) if self.pull else self._prepare_file(config)

    def _prepare_file(self, config) -> PreparedModel:
        path = Path(config.model_path) if config.model_path else None
        if path is None or not path.is_file():
            raise ModelMissing(
                f"the run's model file {path or '(not recorded)'} is not on this machine; "
                f"fetch it (bench fetch {config.config_id}) or use --pull for Ollama's own tag"
            )
        if _SPLIT_GGUF.search(path.name):
            raise CreateFailed(f"{path.name} is a split GGUF, which Ollama cannot create a model from; use --pull")
        if config.model_bytes and path.stat().st_size != config.model_bytes:
            raise CreateFailed(
                f"{path} is {path.stat().st_size} bytes, the run loaded {config.model_bytes}: the file changed "
                "since the run"
            )
        sha = config.sha256 or _sha256(path)
        digest = f"sha256:{sha}"
        if not self._blob_exists(digest):
            with self._errors(f"uploading {path.name} (POST /api/blobs)"):
                uploaded = self._client.create_blob(path)
            if uploaded != digest:
                raise CreateFailed(f"{path} hashes to {uploaded}, the run recorded {digest}: the file changed since the run")
        name = ollama_model_name(config.config_id, sha)
        self._progress(f"creating {name}", lambda: self._client.create(model=name, files={path.name: digest}, stream=True),
                       CreateFailed)
        details = self._show(name)
        return PreparedModel(name, True, f"created from the run's file ({digest[:19]}…)", details)

    def _prepare_pull(self, config) -> PreparedModel:
        tag = config.ollama_tag
        if not tag:
            raise ModelMissing(
                f"{config.config_id} has no ollama_tag in the manifest; drop --pull to serve the run's own file"
            )
        try:
            self._progress(f"pulling {tag}", lambda: self._client.pull(tag, stream=True), CreateFailed)
        except CreateFailed as exc:
            if any(word in str(exc).lower() for word in ("does not exist", "not found")):
                raise ModelMissing(f"Ollama has no {tag} to pull: {exc}") from None
            raise
        details = self._show(tag)
        blob = details.get("blob_sha256")
        if blob and config.sha256:
            same = blob == config.sha256
            evidence = f"Ollama's {tag} is blob sha256:{blob[:12]}…, the run's file sha256:{config.sha256[:12]}…"
        else:
            same, evidence = None, f"Ollama's {tag}: its blob digest could not be read from /api/show"
        return PreparedModel(tag, same, evidence, details)

    def _blob_exists(self, digest: str) -> bool:
        with self._errors(f"HEAD /api/blobs/{digest[:19]}…"):
            response = self._http.head(f"/api/blobs/{digest}")
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise ServerError(f"HEAD /api/blobs: unexpected status {response.status_code}")

    def _progress(self, what: str, start, failure) -> list[str]:
        """Follow a streamed /api/create or /api/pull to its final status; anything else is `failure`."""
        statuses: list[str] = []
        try:
            with self._errors(what):
                for part in start():
                    if part.status:
                        statuses.append(part.status)
        except ServerError as exc:
            raise failure(str(exc)) from None
        if not statuses or statuses[-1] != "success":
            last = statuses[-1] if statuses else "nothing"
            raise failure(f"{what}: Ollama stopped at {last!r} instead of 'success'")
        return statuses

    def _show(self, name: str) -> dict[str, Any]:
        with self._errors(f"POST /api/show {name}"):
            shown = self._client.show(name)
        data = shown.model_dump(exclude_none=True, mode="json")
        match = _FROM_BLOB.search(data.get("modelfile") or "")
        return {
            "name": name,
            "parameters": data.get("parameters"),
            "details": data.get("details"),
            "modified_at": data.get("modified_at"),
            "blob_sha256": match.group(1) if match else None,
        }

    # -- requests --------------------------------------------------------------------------------

    def generate(self, model: PreparedModel, request: ServerRequest, *, timed: bool = True) -> ServerReply:
        clock = StreamClock(self.timeout_s)
        pieces: list[str] = []
        final = None
        stream = None
        try:
            with self._errors(f"POST /api/generate {model.name}"):
                stream = self._client.generate(
                    model=model.name, prompt=request.prompt, raw=True, stream=True,
                    options=ollama_options(request), format=request.schema, keep_alive=self.keep_alive,
                )
                for part in stream:
                    if part.response:
                        pieces.append(part.response)
                        clock.content()
                    if part.done:
                        final = part
                        break
                    clock.check_deadline()
        finally:
            if stream is not None:
                stream.close()
        if final is None:
            raise ServerError(f"POST /api/generate {model.name}: the stream ended without its final object (done: true)")
        # Go's omitempty drops zero values: a missing count or duration in the final object is 0.
        figures = {
            "total_duration_ns": final.total_duration or 0,
            "load_duration_ns": final.load_duration or 0,
            "prompt_eval_count": final.prompt_eval_count or 0,
            "prompt_eval_duration_ns": final.prompt_eval_duration or 0,
            "eval_count": final.eval_count or 0,
            "eval_duration_ns": final.eval_duration or 0,
        }
        return clock.reply("".join(pieces), final.done_reason, figures, {"created_at": final.created_at})


def _reason(exc: BaseException) -> str:
    text = one_line(exc)
    if "refused" in text.lower():
        return "connection refused"
    # the client's own ConnectionError says only "Failed to connect to Ollama. Please check ..."
    return "connection failed" if text.startswith("Failed to connect") else text


def _client_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ollama")
    except metadata.PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
