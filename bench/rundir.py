"""Reading and writing run directories without ever leaving a broken line behind.

Every JSONL line is written with a single O_APPEND write of the whole encoded line, so a process
killed at any moment leaves either the full line or nothing; readers still skip (and count) a
truncated last line in case a file was copied mid-write.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bench import records
from bench.errors import RunDirError


def new_run_dir(base: str | Path = "runs", now_unix: float | None = None) -> Path:
    """Create `base/<UTC time>-<host>/`; a suffix keeps two runs started in one second apart."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_unix or time.time()))
    host = socket.gethostname().split(".")[0] or "host"
    base = Path(base)
    for attempt in range(1000):
        name = f"{stamp}-{host}" + (f"-{attempt}" if attempt else "")
        path = base / name
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"could not create a run directory under {base}")


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append one JSON line durably (one write, then fsync)."""
    line = (json.dumps(obj, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        while written < len(line):  # short writes are rare on regular files but legal
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


@dataclass
class JsonlRead:
    rows: list[dict[str, Any]]
    bad_lines: list[int] = field(default_factory=list)  # 1-based line numbers skipped


def read_jsonl(path: str | Path) -> JsonlRead:
    """Read a JSONL file; a missing file is empty; undecodable lines are skipped and counted."""
    path = Path(path)
    result = JsonlRead(rows=[])
    if not path.exists():
        return result
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                result.bad_lines.append(lineno)
                continue
            if isinstance(row, dict):
                result.rows.append(row)
            else:
                result.bad_lines.append(lineno)
    return result


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write a JSON file via a temporary file and rename, so readers never see half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")
    os.replace(tmp, path)


class RunDir:
    """A run directory on disk: the one way later stages read what `bench profile` wrote."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"{path}: not a directory")
        if not (run.path / records.RUN_META_FILE).is_file():
            raise RunDirError(f"{path}: no {records.RUN_META_FILE}; not a bench run directory")
        version = run.meta().get("schema_version")
        if version != records.SCHEMA_VERSION:
            raise RunDirError(
                f"{path}: run schema version {version!r}, this bench reads {records.SCHEMA_VERSION}"
            )
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.file(records.RUN_META_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{self.file(records.RUN_META_FILE)}: unreadable ({exc})") from exc

    def write_meta(self, meta: dict[str, Any]) -> None:
        meta = {"schema_version": records.SCHEMA_VERSION, **meta}
        write_json_atomic(self.file(records.RUN_META_FILE), meta)

    def append(self, name: str, record) -> None:
        obj = records.to_dict(record) if hasattr(record, "__dataclass_fields__") else record
        append_jsonl(self.file(name), obj)

    def requests(self) -> list[records.RequestRecord]:
        return self._records(records.REQUESTS_FILE, records.RequestRecord)

    def configs(self) -> list[records.ConfigRecord]:
        return self._records(records.CONFIGS_FILE, records.ConfigRecord)

    def telemetry(self) -> Iterator[records.TelemetrySample]:
        for lineno, row in enumerate(self._rows(records.TELEMETRY_FILE), start=1):
            yield self._record(records.TELEMETRY_FILE, lineno, records.TelemetrySample, row)

    def scores(self) -> list[records.ScoreRecord]:
        return self._records(records.SCORES_FILE, records.ScoreRecord)

    def _records(self, name: str, cls) -> list:
        return [self._record(name, i, cls, row) for i, row in enumerate(self._rows(name), start=1)]

    def _record(self, name: str, index: int, cls, row: dict[str, Any]):
        try:
            return records.from_dict(cls, row)
        except records.RecordError as exc:
            # A valid JSON line of the wrong shape means the file is not bench's: say which, once.
            raise RunDirError(f"{self.file(name)}: record {index}: {exc}") from exc

    def recorded_keys(self) -> set[str]:
        """Keys of requests already on disk: what `--resume` skips."""
        return {r.key for r in self.requests()}

    def _rows(self, name: str) -> list[dict[str, Any]]:
        return read_jsonl(self.file(name)).rows

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self.file(records.LOG_FILE).open("a") as fh:
            fh.write(f"{stamp} {message}\n")
