"""A stand-in Ollama on 127.0.0.1 that replays the response streams of Ollama's API documentation.

No real Ollama can be installed where the tests run, so this server answers the endpoints
`bench crosscheck` uses with the shapes docs/api.md shows:

- GET  /api/version                   {"version": "0.6.8"}
- HEAD /api/blobs/sha256:<hex>        200 when the blob exists, 404 when not
- POST /api/blobs/sha256:<hex>        201 Created; 400 when the body does not hash to the digest
- POST /api/create                    NDJSON: {"status":"parsing GGUF"} … {"status":"success"} (or an error)
- POST /api/show                      the model's modelfile (FROM …/blobs/sha256-<hex>), parameters,
                                      template, details; 404 {"error": "model '…' not found"}
- POST /api/pull                      NDJSON: pulling manifest, downloading <digest> (total/completed),
                                      verifying sha256 digest, writing manifest, success
- POST /api/generate                  NDJSON chunks {"model","created_at","response","done":false},
                                      then the final object with done=true, done_reason and the durations
                                      in nanoseconds; 404 for an unknown model

A Scenario decides the answers: outputs per prompt, each prompt's token count, and per-prompt
overrides of the final object (a cached prompt, a zero eval_duration, a load_duration) or a stall
(a timeout). Every request is logged for the tests to inspect.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREATED_AT = "2024-12-06T00:48:09.983619Z"
_TOKEN_RE = re.compile(r"\S+\s*|\s+")
_OMIT = object()


@dataclass
class Scenario:
    version: str = "0.6.8"
    outputs: dict[str, str] = field(default_factory=dict)  # prompt -> full output
    default_output: str = "Fine."
    prompt_tokens: dict[str, int] = field(default_factory=dict)  # prompt -> its token count
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # prompt -> final-object fields (None: omit)
    stall_s: dict[str, float] = field(default_factory=dict)  # prompt -> seconds to wait before the first chunk
    token_interval_s: float = 0.002  # between streamed chunks (0: every chunk in one write, a burst)
    eval_ns_per_token: int = 2_000_000  # the eval_duration the final object reports, per token (500 tok/s)
    blobs: dict[str, bytes] = field(default_factory=dict)  # "sha256:<hex>" -> content
    models: dict[str, str] = field(default_factory=dict)  # model name -> blob hex it was made from
    pullable: dict[str, str] = field(default_factory=dict)  # tag -> blob hex of its GGUF
    create_error: str | None = None  # streamed {"error": …} after "parsing GGUF"
    create_http_error: tuple[int, str] | None = None  # (status, message) before any stream
    log: list[dict[str, Any]] = field(default_factory=list)

    def generate_bodies(self, timed_only: bool = False) -> list[dict]:
        bodies = [e["body"] for e in self.log if e["path"] == "/api/generate"]
        if timed_only:
            bodies = [b for b in bodies if b.get("prompt") in self.outputs]
        return bodies

    def calls(self, method: str, prefix: str) -> list[dict]:
        return [e for e in self.log if e["method"] == method and e["path"].startswith(prefix)]


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


class _Handler(BaseHTTPRequestHandler):
    server_version = "ollama-replay"
    scenario: Scenario  # set per server class

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------

    def _body_bytes(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            return bytes(data)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        raw = self._body_bytes()
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return {}

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()  # HTTP/1.0: the stream ends when the connection closes

    def _line(self, obj: Any) -> None:
        self.wfile.write((json.dumps(obj) + "\n").encode())
        self.wfile.flush()

    def _log(self, body: Any) -> None:
        self.scenario.log.append({"method": self.command, "path": self.path, "body": body})

    # -- endpoints -----------------------------------------------------------------------------

    def do_GET(self):
        self._log(None)
        if self.path == "/api/version":
            return self._send_json(200, {"version": self.scenario.version})
        return self._send_json(404, {"error": "not found"})

    def do_HEAD(self):
        self._log(None)
        if self.path.startswith("/api/blobs/"):
            digest = self.path[len("/api/blobs/"):]
            self.send_response(200 if digest in self.scenario.blobs else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(404)
        self.end_headers()

    def do_POST(self):
        if self.path.startswith("/api/blobs/"):
            return self._blob()
        body = self._json_body()
        self._log(body)
        handler = {
            "/api/create": self._create,
            "/api/show": self._show,
            "/api/pull": self._pull,
            "/api/generate": self._generate,
        }.get(self.path)
        if handler is None:
            return self._send_json(404, {"error": f"unknown endpoint {self.path}"})
        return handler(body)

    def _blob(self):
        digest = self.path[len("/api/blobs/"):]
        data = self._body_bytes()
        self._log({"bytes": len(data)})
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            return self._send_json(400, {"error": "digest mismatch"})
        self.scenario.blobs[digest] = data
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _create(self, body: dict):
        s = self.scenario
        if s.create_http_error:
            status, message = s.create_http_error
            return self._send_json(status, {"error": message})
        files = body.get("files") or {}
        if not files:
            return self._send_json(400, {"error": "neither 'from' or 'files' was specified"})
        missing = [d for d in files.values() if d not in s.blobs]
        if missing:
            return self._send_json(400, {"error": f"blob {missing[0]} not found"})
        self._start_stream()
        self._line({"status": "parsing GGUF"})
        if s.create_error:
            self._line({"error": s.create_error})
            return
        digest = next(iter(files.values()))
        self._line({"status": f"using existing layer {digest}"})
        self._line({"status": "writing manifest"})
        self._line({"status": "success"})
        s.models[_full_name(body["model"])] = digest.split(":", 1)[1]

    def _show(self, body: dict):
        name = _full_name(body.get("model", ""))
        blob = self.scenario.models.get(name)
        if blob is None:
            return self._send_json(404, {"error": f"model '{body.get('model')}' not found"})
        return self._send_json(200, {
            "modelfile": (
                '# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this one, replace the '
                f"FROM line with:\n# FROM {name}\n\nFROM /root/.ollama/models/blobs/sha256-{blob}\n"
                'TEMPLATE """{{ .Prompt }}"""\nPARAMETER stop <|im_end|>\n'
            ),
            "parameters": 'stop                           "<|im_end|>"',
            "template": "{{ .Prompt }}",
            "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                        "parameter_size": "134.52M", "quantization_level": "Q4_1"},
            "model_info": {"general.architecture": "llama"},
            "modified_at": "2024-12-06T00:48:09.983619Z",
        })

    def _pull(self, body: dict):
        s = self.scenario
        name = _full_name(body.get("model", ""))
        self._start_stream()
        self._line({"status": "pulling manifest"})
        blob = s.pullable.get(name)
        if blob is None:
            self._line({"error": "pull model manifest: file does not exist"})
            return
        digest = f"sha256:{blob}"
        self._line({"status": f"pulling {blob[:12]}", "digest": digest, "total": 2142590208})
        self._line({"status": f"pulling {blob[:12]}", "digest": digest, "total": 2142590208, "completed": 241970})
        self._line({"status": f"pulling {blob[:12]}", "digest": digest, "total": 2142590208, "completed": 2142590208})
        self._line({"status": "verifying sha256 digest"})
        self._line({"status": "writing manifest"})
        self._line({"status": "success"})
        s.models[name] = blob

    def _generate(self, body: dict):
        s = self.scenario
        model = body.get("model", "")
        if _full_name(model) not in s.models:
            return self._send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
        prompt = body.get("prompt") or ""
        if not prompt:  # docs: "If an empty prompt is provided, the model will be loaded into memory."
            return self._send_json(200, {"model": model, "created_at": CREATED_AT, "response": "", "done": True})
        options = body.get("options") or {}
        tokens = _tokens(s.outputs.get(prompt, s.default_output))
        limit = options.get("num_predict")
        done_reason = "stop"
        if isinstance(limit, int) and limit >= 0 and len(tokens) > limit:
            tokens, done_reason = tokens[:limit], "length"
        stall = s.stall_s.get(prompt, 0.0)
        self._start_stream()
        try:
            if stall:
                time.sleep(stall)
            chunks = [{"model": model, "created_at": CREATED_AT, "response": t, "done": False} for t in tokens]
            if s.token_interval_s:
                for index, chunk in enumerate(chunks):
                    if index:
                        time.sleep(s.token_interval_s)
                    self._line(chunk)
            else:  # held back and sent together, as a buffering proxy would
                self.wfile.write("".join(json.dumps(c) + "\n" for c in chunks).encode())
            n_prompt = s.prompt_tokens.get(prompt, len(prompt.split()))
            final = {
                "model": model, "created_at": CREATED_AT, "response": "", "done": True, "done_reason": done_reason,
                "total_duration": 1_162_761_250, "load_duration": 6_683_708,
                "prompt_eval_count": n_prompt, "prompt_eval_duration": 201_222_000,
                "eval_count": len(tokens), "eval_duration": s.eval_ns_per_token * max(len(tokens), 1),
            }
            for key, value in s.overrides.get(prompt, {}).items():
                if value is None:
                    final.pop(key, None)  # Go's omitempty: a zero field is not sent at all
                else:
                    final[key] = value
            self._line(final)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)


def _full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class OllamaReplay:
    """`with OllamaReplay(scenario) as server: server.url` — a threaded server on 127.0.0.1."""

    def __init__(self, scenario: Scenario | None = None):
        self.scenario = scenario or Scenario()
        handler = type("Handler", (_Handler,), {"scenario": self.scenario})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "OllamaReplay":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
