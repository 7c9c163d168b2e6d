"""A local stand-in for the Hugging Face Hub's file endpoints, for tests that must never touch the network.

It serves `HEAD/GET {endpoint}/{repo_id}/resolve/{revision}/{filename}` the way huggingface_hub expects:
the resolve URL answers with the hub's metadata headers (X-Repo-Commit, X-Linked-Etag = sha256,
X-Linked-Size) and a 302 to a "CDN" URL on another host name (`localhost` instead of `127.0.0.1`, so
the client treats it as off-hub, as it does the real LFS CDN), which serves the bytes with Range support.
Missing files answer 404 with `X-Error-Code: EntryNotFound`, unknown repos 401 with `RepoNotFound`,
as the real hub does, so the client raises its real error types.

    with HubStub({"org/repo": {"model.gguf": b"..."}}) as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        ...
        assert hub.count("GET", "model.gguf") == 1

`drop_after` makes the first GET of a file close the connection after that many bytes (to test resume);
`announce` makes the hub announce another sha256 than the bytes it serves (corruption in transit).
Every request is recorded in `hub.requests` (method, path, Range header, Authorization present).
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<file>.+)$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    authorized: bool


@dataclass
class HubStub:
    """Files per repo: {"org/name": {"file.gguf": b"bytes"}}. Start/stop with `with`."""

    repos: dict[str, dict[str, bytes]]
    drop_after: dict[str, int] = field(default_factory=dict)  # filename -> bytes sent before the first GET drops
    announce: dict[str, str] = field(default_factory=dict)  # filename -> sha256 to announce instead of the real one
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._dropped: set[str] = set()
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "HubStub":
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- what the tests look at --------------------------------------------------------------
    @staticmethod
    def sha256(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def count(self, method: str, filename: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.endswith("/" + filename))

    def gets(self, filename: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]

    # --- the server --------------------------------------------------------------------------
    def _handler_class(self):
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                path = unquote(self.path.split("?", 1)[0])
                with stub._lock:
                    stub.requests.append(
                        Request(self.command, path, self.headers.get("Range"), "Authorization" in self.headers)
                    )
                if m := _RESOLVE.match(path):
                    self._resolve(m["repo"], m["file"], body)
                elif m := _CDN.match(path):
                    self._cdn(m["repo"], m["file"], body)
                else:
                    self._empty(404)

            def _resolve(self, repo: str, filename: str, body: bool):
                files = stub.repos.get(repo)
                if files is None:
                    return self._empty(401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
                if filename not in files:
                    return self._empty(
                        404,
                        {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": COMMIT},
                    )
                data = files[filename]
                host = self.headers.get("Host", "").replace("127.0.0.1", "localhost")
                self._empty(
                    302,
                    {
                        "Location": f"http://{host}/cdn/{repo}/{filename}",
                        "X-Repo-Commit": COMMIT,
                        "X-Linked-Etag": f'"{stub.announce.get(filename) or stub.sha256(data)}"',
                        "X-Linked-Size": str(len(data)),
                        "ETag": '"git-oid-not-used"',
                    },
                )

            def _cdn(self, repo: str, filename: str, body: bool):
                data = stub.repos.get(repo, {}).get(filename)
                if data is None:
                    return self._empty(404)
                start = 0
                status = 200
                if (rng := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())):
                    start = int(m[1])
                    status = 206
                chunk = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{stub.sha256(data)}"')
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                with stub._lock:
                    drop = filename in stub.drop_after and filename not in stub._dropped
                    if drop:
                        stub._dropped.add(filename)
                if drop:
                    # Promise the whole length, send part of it, then cut the connection: what a
                    # network failure mid-download looks like to the client.
                    self.wfile.write(chunk[: stub.drop_after[filename]])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)

            def _empty(self, status: int, headers: dict[str, str] | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def point_hf_at(hub: HubStub, monkeypatch, hf_home) -> dict[str, str]:
    """Make huggingface_hub use `hub` and a private cache under `hf_home`.

    huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE into `huggingface_hub.constants` when it is
    first imported, so for this process the constants are patched as well as the environment; a subprocess
    started with the returned environment reads the variables itself, as a user's shell would.
    """
    import os

    from huggingface_hub import constants

    hf_home = str(hf_home)
    env_updates = {
        "HF_HOME": hf_home,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    }
    for key, value in env_updates.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HOME", hf_home)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.path.join(hf_home, "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", os.path.join(hf_home, "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", os.path.join(hf_home, "stored_tokens"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", os.path.join(hf_home, ".agent_harnesses.json"))
    return dict(os.environ)
