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
Every request is recorded in `hub.requests` (method, path, Range header, Authorization present, and the
Authorization value itself).

Uploads (what `HfApi.create_repo` / `upload_file` / `list_repo_files` and `hf_hub_download(repo_type=
"dataset")` call), for the publish/pull tests:

- `POST /api/repos/create` creates a repo (409 when it exists, as the hub answers; the client's exist_ok
  accepts that); the JSON payload is kept in `hub.created`.
- `POST /api/{models|datasets}/{repo}/preupload/{rev}` answers uploadMode "regular" for every file, so the
  client sends contents base64-encoded inside the commit (no LFS/Xet transfer: keep test files small).
- `POST /api/{models|datasets}/{repo}/commit/{rev}` reads the NDJSON commit (header line, then
  {"key": "file", "value": {"path", "content", "encoding": "base64"}} lines) and stores the files.
- `GET /api/{models|datasets}/{repo}/tree/{rev}[/{path}]` lists files (and folders) as JSON.
- `HEAD/GET /datasets/{repo}/resolve/{rev}/{file}` serves dataset files like model files (302 to the "CDN").

Dataset repos live in `datasets` ({"org/name": {"path/in/repo": b"..."}}), model repos in `repos`. With
`token` set, every upload endpoint answers 401 unless it gets `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<file>.+)$")
_DATASET_RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_DATASET_CDN = re.compile(r"^/cdn-datasets/(?P<repo>[^/]+/[^/]+)/(?P<file>.+)$")
_API_REPO = re.compile(
    r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit|tree)/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    authorized: bool
    authorization: str | None = None  # the header's value, to check what credentials reached the hub


@dataclass
class HubStub:
    """Files per repo: {"org/name": {"file.gguf": b"bytes"}}. Start/stop with `with`."""

    repos: dict[str, dict[str, bytes]]
    drop_after: dict[str, int] = field(default_factory=dict)  # filename -> bytes sent before the first GET drops
    announce: dict[str, str] = field(default_factory=dict)  # filename -> sha256 to announce instead of the real one
    requests: list[Request] = field(default_factory=list)
    datasets: dict[str, dict[str, bytes]] = field(default_factory=dict)  # dataset repos: {"org/name": {path: bytes}}
    token: str | None = None  # when set, uploads need "Authorization: Bearer <token>"
    created: list[dict] = field(default_factory=list)  # create_repo payloads received
    commits: list[dict] = field(default_factory=list)  # {"repo", "kind", "summary", "files": [paths]}
    echo_auth: bool = False  # a refusal quotes the Authorization header back (a careless proxy), to test scrubbing

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

            def do_POST(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                path = unquote(self.path.split("?", 1)[0])
                with stub._lock:
                    stub.requests.append(
                        Request(
                            self.command,
                            path,
                            self.headers.get("Range"),
                            "Authorization" in self.headers,
                            self.headers.get("Authorization"),
                        )
                    )
                if self.command == "POST" or path.startswith("/api/"):
                    return self._api(path)
                if m := _DATASET_RESOLVE.match(path):
                    self._resolve(m["repo"], m["file"], body, stub.datasets, "/cdn-datasets")
                elif m := _DATASET_CDN.match(path):
                    self._cdn(m["repo"], m["file"], body, stub.datasets)
                elif m := _RESOLVE.match(path):
                    self._resolve(m["repo"], m["file"], body)
                elif m := _CDN.match(path):
                    self._cdn(m["repo"], m["file"], body)
                else:
                    self._empty(404)

            def _resolve(self, repo: str, filename: str, body: bool, store=None, cdn: str = "/cdn"):
                files = (stub.repos if store is None else store).get(repo)
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
                        "Location": f"http://{host}{cdn}/{repo}/{filename}",
                        "X-Repo-Commit": COMMIT,
                        "X-Linked-Etag": f'"{stub.announce.get(filename) or stub.sha256(data)}"',
                        "X-Linked-Size": str(len(data)),
                        "ETag": '"git-oid-not-used"',
                    },
                )

            def _cdn(self, repo: str, filename: str, body: bool, store=None):
                data = (stub.repos if store is None else store).get(repo, {}).get(filename)
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

            # --- the upload API -----------------------------------------------------------------
            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _json(self, status: int, obj, headers: dict[str, str] | None = None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _denied(self) -> bool:
                if stub.token is None or self.headers.get("Authorization") == f"Bearer {stub.token}":
                    return False
                message = "Invalid credentials in Authorization header"
                if stub.echo_auth:
                    message += f": {self.headers.get('Authorization')}"
                self._json(401, {"error": message}, {"X-Error-Message": message})
                return True

            def _api(self, path: str):
                body = self._read_body() if self.command == "POST" else b""
                if path == "/api/repos/create" and self.command == "POST":
                    if self._denied():
                        return
                    payload = json.loads(body or b"{}")
                    with stub._lock:
                        stub.created.append(payload)
                    store = stub.datasets if payload.get("type") == "dataset" else stub.repos
                    repo = f"{payload.get('organization')}/{payload.get('name')}"
                    prefix = "datasets/" if payload.get("type") == "dataset" else ""
                    if repo in store:
                        return self._json(409, {"error": "You already created this repo", "url": f"{stub.endpoint}/{prefix}{repo}"},
                                          {"X-Error-Message": "You already created this repo"})
                    store[repo] = {}
                    return self._json(200, {"url": f"{stub.endpoint}/{prefix}{repo}", "name": repo})
                m = _API_REPO.match(path)
                if m is None:
                    return self._empty(404)
                store = stub.datasets if m["kind"] == "datasets" else stub.repos
                files = store.get(m["repo"])
                if m["op"] in ("preupload", "commit") and self._denied():
                    return
                if files is None:
                    return self._json(404, {"error": "Repository not found"},
                                      {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
                if m["op"] == "preupload":
                    listed = json.loads(body).get("files", [])
                    return self._json(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in listed
                    ]})
                if m["op"] == "commit":
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    header = next((x["value"] for x in lines if x.get("key") == "header"), {})
                    added = []
                    for item in lines:
                        if item.get("key") == "file":
                            value = item["value"]
                            files[value["path"]] = base64.b64decode(value["content"])
                            added.append(value["path"])
                        elif item.get("key") not in ("header", None):
                            return self._json(400, {"error": f"this stub takes regular files only, not {item.get('key')}"})
                    with stub._lock:
                        stub.commits.append({"repo": m["repo"], "kind": m["kind"], "summary": header.get("summary"), "files": added})
                    prefix = "datasets/" if m["kind"] == "datasets" else ""
                    return self._json(200, {"commitUrl": f"{stub.endpoint}/{prefix}{m['repo']}/commit/{COMMIT}",
                                            "commitOid": COMMIT, "success": True})
                # tree: files, plus the folders above them, under the asked-for path
                under = (m["path"] or "").strip("/")
                entries, folders = [], set()
                for name, data in sorted(files.items()):
                    if under and not name.startswith(under + "/"):
                        continue
                    parts = name.split("/")
                    for i in range(1, len(parts)):
                        folder = "/".join(parts[:i])
                        if (not under or folder.startswith(under + "/")) and folder not in folders:
                            folders.add(folder)
                            entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder})
                    entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name})
                return self._json(200, entries)

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
