"""`gguf.lock`: the sha256 of every model file bench has trusted, and a cache of which files it has verified.

Manifests often carry no sha256 (the hub's LFS digests are not published in a stable place for every
quant), so bench trusts a file on first use: it hashes it, records the digest here and checks the file
against it on every later use. A file that changes afterwards (corrupted, replaced, re-quantised
upstream under the same name) is refused.

Layout (JSON, so the standard library reads and writes it):

    {"schema": 1,
     "files": {"<entry id>": {"<file name>": {
         "sha256": "...", "size_bytes": 123, "recorded_at": "2025-01-01T00:00:00+00:00",
         "verified": {"path": "...", "size_bytes": 123, "mtime_ns": 456, "sha256": "..."}}}}}

`verified` remembers the last file that was hashed for this name and what its digest was, keyed by
(path, size, mtime_ns): hashing a 9 GB GGUF takes tens of seconds, far too long to pay on every run,
while any rewrite of the file changes its size or mtime and so forces a fresh hash.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.errors import FetchError

SCHEMA = 1


@dataclass(frozen=True)
class FileStat:
    """What identifies one version of a file on disk without reading it."""

    path: str
    size_bytes: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileStat":
        # Resolve the HF cache's snapshot symlink: the blob is what gets rewritten.
        real = Path(path).resolve()
        st = real.stat()
        return cls(str(real), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class LockRecord:
    sha256: str
    size_bytes: int
    recorded_at: str


class Lockfile:
    """Read-modify-write access to one gguf.lock. Every change is written at once, atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # --- reading ------------------------------------------------------------------------------
    def _load(self) -> dict:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"schema": SCHEMA, "files": {}}
        except OSError as exc:
            raise FetchError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FetchError(
                f"{self.path} is not valid JSON (line {exc.lineno}): fix it or delete it to re-record digests"
            ) from exc
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("files"), dict):
            raise FetchError(f"{self.path} has an unknown layout (expected schema {SCHEMA}): delete it to re-record")
        return data

    def _file(self, data: dict, entry_id: str, filename: str) -> dict | None:
        return data["files"].get(entry_id, {}).get(filename)

    def record(self, entry_id: str, filename: str) -> LockRecord | None:
        """The trusted digest of this entry's file, or None if none is recorded yet."""
        rec = self._file(self._load(), entry_id, filename)
        if not rec or "sha256" not in rec:
            return None
        return LockRecord(rec["sha256"], int(rec.get("size_bytes", -1)), rec.get("recorded_at", ""))

    def cached_digest(self, entry_id: str, filename: str, stat: FileStat) -> str | None:
        """The digest hashed earlier for exactly this file version (same path, size, mtime), else None."""
        rec = self._file(self._load(), entry_id, filename) or {}
        seen = rec.get("verified")
        if not isinstance(seen, dict):
            return None
        if (seen.get("path"), seen.get("size_bytes"), seen.get("mtime_ns")) != (
            stat.path,
            stat.size_bytes,
            stat.mtime_ns,
        ):
            return None
        return seen.get("sha256")

    # --- writing ------------------------------------------------------------------------------
    def update(self, entry_id: str, filename: str, *, sha256: str, stat: FileStat, trust: bool) -> None:
        """Remember that `stat`'s file hashed to `sha256`; with trust=True also record it as the trusted digest
        (only when none is recorded: a recorded digest is never overwritten silently)."""
        # Re-read right before writing so a concurrent bench process's records are kept.
        data = self._load()
        rec = data["files"].setdefault(entry_id, {}).setdefault(filename, {})
        if trust and "sha256" not in rec:
            rec["sha256"] = sha256
            rec["size_bytes"] = stat.size_bytes
            rec["recorded_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rec["verified"] = {
            "path": stat.path,
            "size_bytes": stat.size_bytes,
            "mtime_ns": stat.mtime_ns,
            "sha256": sha256,
        }
        self._write(data)

    def _write(self, data: dict) -> None:
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise FetchError(f"cannot write {self.path}: {exc.strerror or exc} (set BENCH_LOCK to a writable path)") from exc


def lock_path_for(manifest) -> Path:
    """Where the lock for `manifest` lives: BENCH_LOCK if set, else gguf.lock beside the manifest,
    else (manifest in a read-only place, e.g. a system-wide install) a per-user state file."""
    override = os.environ.get("BENCH_LOCK")
    if override:
        return Path(override).expanduser()
    beside = Path(manifest.lock_path)
    target = beside if beside.exists() else beside.parent
    if os.access(target, os.W_OK):
        return beside
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "bench" / beside.name
