"""Sharing runs through a Hugging Face dataset repo: publish one export, pull others' to compare.

A repo holds one archive per run at `runs/<run name>.zip` (what `bench export` writes). The token comes
from where huggingface_hub looks for it (HF_TOKEN, then the cached `hf auth login`); bench never reads it
into a file, never prints it, and scrubs it from any error it reports.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.archive import SUFFIXES, ArchiveError, export_run, import_archive
from bench.errors import BenchError
from bench.fetch import cause_chain, scrub

RUNS_FOLDER = "runs"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class HubShareError(BenchError):
    """A run could not be published to, or pulled from, the hub."""


@dataclass
class Published:
    repo_id: str
    path_in_repo: str
    url: str
    bytes: int


@dataclass
class Pulled:
    name: str
    path: Path | None  # the run directory, None when skipped
    skipped: str = ""  # why it was not imported


def _hub():
    import huggingface_hub

    return huggingface_hub


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id or "") or ".." in repo_id:
        raise HubShareError(f"the repo must be OWNER/NAME (e.g. alice/bench-runs), not {repo_id!r}")
    return repo_id


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def hub_error(exc: BaseException, doing: str, repo_id: str) -> HubShareError:
    """A huggingface_hub / network failure as one line, without any token in it."""
    hub = _hub()
    errors = hub.errors
    chain = cause_chain(exc)

    def find(kind):
        return next((e for e in chain if isinstance(e, kind)), None)

    status = getattr(getattr(exc, "response", None), "status_code", None)
    endpoint = hub.constants.ENDPOINT
    if find(errors.RepositoryNotFoundError):
        text = f"{doing}: dataset repo {repo_id} not found (HTTP {status}; check the name; a private repo needs HF_TOKEN)"
    elif find(errors.RemoteEntryNotFoundError):
        text = f"{doing}: not found in {repo_id} (HTTP {status})"
    elif (e := find(errors.HfHubHTTPError)) is not None:
        status = getattr(getattr(e, "response", None), "status_code", status)
        hint = " (check that HF_TOKEN has write access to it)" if status in (401, 403) else ""
        server = getattr(e, "server_message", None)
        said = f"the hub says: {_first_line(Exception(server))}" if server else _first_line(e)
        text = f"{doing}: the hub answered HTTP {status}{hint}; {said}"
    elif find(errors.HFValidationError):
        text = f"{doing}: {_first_line(exc)}"
    elif (e := next((e for e in chain if type(e).__module__.startswith(("httpx", "httpcore"))), None)) is not None:
        text = f"{doing}: cannot reach {endpoint} ({_first_line(e)}; check the connection or HF_ENDPOINT)"
    else:
        text = f"{doing}: {type(exc).__name__}: {_first_line(exc)}"
    return HubShareError(scrub(text))


def publish(run_dir: str | Path, repo_id: str, *, private: bool = False) -> Published:
    """Export RUN_DIR and upload it to the dataset repo as runs/<run name>.zip (creating the repo if needed)."""
    check_repo_id(repo_id)
    hub = _hub()
    if not hub.get_token():
        raise HubShareError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token)")
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        name = Path(run_dir).resolve().name
        archive = export_run(run_dir, Path(tmp) / f"{name}.zip")
        path_in_repo = f"{RUNS_FOLDER}/{archive.run_name}.zip"
        api = hub.HfApi()
        try:
            api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private or None)
        except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
            raise hub_error(exc, f"cannot create dataset repo {repo_id}", repo_id) from None
        try:
            api.upload_file(
                path_or_fileobj=str(archive.path),
                path_in_repo=path_in_repo,
                repo_id=repo_id,
                repo_type="dataset",
                commit_message=f"bench publish {archive.run_name}",
            )
        except Exception as exc:  # noqa: BLE001
            raise hub_error(exc, f"cannot upload {path_in_repo} to {repo_id}", repo_id) from None
    url = f"{hub.constants.ENDPOINT}/datasets/{repo_id}/blob/main/{path_in_repo}"
    return Published(repo_id, path_in_repo, url, archive.bytes)


def published_runs(repo_id: str) -> dict[str, str]:
    """Run name -> path in the repo, for every archive under runs/."""
    check_repo_id(repo_id)
    hub = _hub()
    try:
        files = hub.HfApi().list_repo_files(repo_id, repo_type="dataset")
    except Exception as exc:  # noqa: BLE001
        raise hub_error(exc, f"cannot list {repo_id}", repo_id) from None
    runs = {}
    for path in files:
        folder, _, filename = path.partition("/")
        if folder != RUNS_FOLDER or "/" in filename:
            continue
        for suffix in SUFFIXES:
            if filename.endswith(suffix) and len(filename) > len(suffix):
                runs[filename[: -len(suffix)]] = path
                break
    return runs


def pull(repo_id: str, into: str | Path = "runs", names: tuple[str, ...] = ()) -> list[Pulled]:
    """Download runs (all, or those named) from the dataset repo and import each as into/<run name>."""
    available = published_runs(repo_id)
    if not available:
        raise HubShareError(f"{repo_id} holds no published run ({RUNS_FOLDER}/<name>.zip)")
    missing = [n for n in names if n not in available]
    if missing:
        raise HubShareError(f"no run {missing[0]!r} in {repo_id} (it has: {', '.join(sorted(available))})")
    hub = _hub()
    out = []
    for name in names or tuple(sorted(available)):
        target = Path(into) / name
        if target.exists():
            out.append(Pulled(name, target, f"{target} already exists"))
            continue
        try:
            local = hub.hf_hub_download(repo_id, available[name], repo_type="dataset")
        except Exception as exc:  # noqa: BLE001
            raise hub_error(exc, f"cannot download {available[name]} from {repo_id}", repo_id) from None
        try:
            result = import_archive(local, into)
        except ArchiveError as exc:
            raise HubShareError(f"{repo_id}/{available[name]}: {exc}") from None
        out.append(Pulled(name, result.path))
    return out
