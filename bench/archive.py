"""One self-describing archive per run: `bench export` writes it, `bench import` turns it back into a run directory.

Layout of the archive (a .zip, .tar, .tar.gz or .tgz):

    manifest.json              bench_export_schema_version, bench version, created time, run name, and every
                               other member with its sha256, size and where it goes back in the run directory
    run.json                   as in the run directory, byte for byte
    tables/requests.parquet    requests.jsonl  } one row per JSON line, one column per field; lists (token_times_ms,
    tables/scores.parquet      scores.jsonl    } throttle_reasons) as list columns; dicts (extra, metrics) and any
    tables/telemetry.parquet   telemetry.jsonl } field this bench does not know as JSON strings
    files/<path>               every other file of the run directory (configs.jsonl, log.txt, crosscheck/, sweep.jsonl …)

Import rebuilds each JSONL file from its table so the records are equal field for field: a column is stored
typed (int64, float64, bool, string, list) only when every value comes back exactly as it went in, so floats
are bit-exact; a column where that fails (a float in an int field, a bool in a float field …) is stored as
JSON text instead. A key absent from a line stays absent. A JSONL file with unreadable lines (a copy taken
mid-write) is archived as-is instead, so nothing is lost or silently dropped.

The Parquet tables are written with pyarrow directly rather than through pandas, because pandas turns an int
column holding a null into floats; `pandas.read_parquet` reads them as usual.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import time
import types
import typing
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bench import __version__, records
from bench.errors import BenchError
from bench.rundir import RunDir, read_jsonl

EXPORT_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ABSENT_COLUMN = "__absent__"  # per row: the keys that line did not have
TABLES = {
    records.REQUESTS_FILE: ("tables/requests.parquet", records.RequestRecord),
    records.SCORES_FILE: ("tables/scores.parquet", records.ScoreRecord),
    records.TELEMETRY_FILE: ("tables/telemetry.parquet", records.TelemetrySample),
}
# Outputs `bench report` / `bench compare` regenerate from the records; left out to keep archives small.
REGENERATED_DIRS = ("report", "compare", "compare-study")
SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_CHUNK = 1 << 20


class ArchiveError(BenchError):
    """An export archive is unreadable, damaged, of another schema version, or cannot be written."""


@dataclass
class ExportResult:
    path: Path
    run_name: str
    rows: dict[str, int]  # run-directory JSONL file -> rows archived as a table
    files: list[str]  # other run-directory files archived as they are
    skipped: list[str]  # what was left out, and why
    notes: list[str]  # what the user should know about what went in
    bytes: int


@dataclass
class ImportResult:
    path: Path  # the run directory created
    run_name: str
    rows: dict[str, int]
    files: list[str]


# ------------------------------------------------------------------ columns


def _arrow():
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def _column_types(cls) -> dict[str, Any]:
    """Field name -> pyarrow type, or None for "store as JSON text" (dicts and anything unusual)."""
    pa, _ = _arrow()
    scalar = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = args[0] if len(args) == 1 else None
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list and typing.get_args(hint) else None
        if hint in scalar:
            out[f.name] = scalar[hint]
        elif item in scalar:
            out[f.name] = pa.list_(scalar[item])
        else:
            out[f.name] = None
    return out


def _same(original: Any, restored: Any) -> bool:
    """True when `restored` is what a JSON reader would call the same value, type included (an int may become float)."""
    if original is None or restored is None:
        return original is None and restored is None
    if isinstance(original, bool) or isinstance(restored, bool):
        return type(original) is type(restored) and original == restored
    if isinstance(original, float) and isinstance(restored, float):
        if math.isnan(original) or math.isnan(restored):
            return math.isnan(original) and math.isnan(restored)
        return original == restored and math.copysign(1.0, original) == math.copysign(1.0, restored)  # keeps -0.0
    if isinstance(original, int) and isinstance(restored, (int, float)):
        return original == restored
    if isinstance(original, list) and isinstance(restored, list):
        return len(original) == len(restored) and all(_same(a, b) for a, b in zip(original, restored))
    return type(original) is type(restored) and original == restored


def _json_text(value: Any) -> str | None:
    # allow_nan: bench never writes NaN, but a line that holds one must come back as it was
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _candidate_types(declared, values: list[Any]) -> list:
    """Arrow types to try for a column, best first. A float field that only ever held ints (NVML's energy
    counter in mJ, say) is stored as int64 so its lines come back as written, not with a '.0' added."""
    pa, _ = _arrow()
    if declared is None:
        return []
    if declared == pa.float64() and all(v is None or _is_int(v) for v in values):
        return [pa.int64(), declared]
    if declared == pa.list_(pa.float64()) and all(v is None or all(_is_int(x) for x in v) for v in values if isinstance(v, list)):
        return [pa.list_(pa.int64()), declared]
    return [declared]


def rows_to_table(rows: list[dict[str, Any]], cls, source: str):
    """JSONL rows -> a pyarrow Table whose schema metadata says how to turn it back."""
    pa, _ = _arrow()
    types = _column_types(cls)
    names = list(types)
    for row in rows:
        for key in row:
            if key not in types and key not in names:
                names.append(key)
    arrays, json_columns = [], []
    for name in names:
        values = [row.get(name) for row in rows]
        array = None
        for arrow_type in _candidate_types(types.get(name), values):
            try:
                candidate = pa.array(values, type=arrow_type)
                if all(_same(a, b) for a, b in zip(values, candidate.to_pylist())):
                    array = candidate
                    break
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
                continue
        if array is None:
            json_columns.append(name)
            array = pa.array([_json_text(v) for v in values], type=pa.string())
        arrays.append(array)
    absent = [[k for k in names if k not in row] for row in rows]
    if any(absent):
        names.append(ABSENT_COLUMN)
        arrays.append(pa.array(absent, type=pa.list_(pa.string())))
    metadata = {
        "bench.source": source,
        "bench.record": cls.__name__,
        "bench.json_columns": json.dumps(json_columns),
        "bench.export_schema_version": str(EXPORT_SCHEMA_VERSION),
    }
    schema = pa.schema([pa.field(n, a.type) for n, a in zip(names, arrays)], metadata=metadata)
    return pa.Table.from_arrays(arrays, schema=schema), json_columns


def table_to_rows(table) -> list[dict[str, Any]]:
    """The inverse of rows_to_table: the JSONL rows, keys in their original order, absent keys left out."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    json_columns = set(json.loads(meta.get("bench.json_columns", "[]")))
    names = [n for n in table.column_names if n != ABSENT_COLUMN]
    columns = {n: table.column(n).to_pylist() for n in names}
    absent = table.column(ABSENT_COLUMN).to_pylist() if ABSENT_COLUMN in table.column_names else None
    rows = []
    for i in range(table.num_rows):
        skip = set(absent[i] or ()) if absent else ()
        row = {}
        for name in names:
            if name in skip:
                continue
            value = columns[name][i]
            row[name] = json.loads(value) if name in json_columns and value is not None else value
        rows.append(row)
    return rows


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    """The lines as bench.rundir.append_jsonl writes them."""
    return b"".join(
        (json.dumps(row, ensure_ascii=False) + "\n").encode() for row in rows
    )


# ------------------------------------------------------------------ export


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _archive_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".tar"):
        return "tar"
    raise ArchiveError(f"{path}: unknown archive type; name it .zip, .tar, .tar.gz or .tgz")


def _run_files(run_path: Path) -> tuple[list[Path], list[str]]:
    """Files to archive (relative paths) and what was left out."""
    files, skipped = [], []
    for path in sorted(run_path.rglob("*")):
        rel = path.relative_to(run_path)
        if any(part.startswith(".") for part in rel.parts):
            continue  # a worker's spec file, an atomic write's temporary: not results
        if rel.parts[0] in REGENERATED_DIRS:
            if len(rel.parts) == 1:
                skipped.append(f"{rel}/ (regenerated by bench {'report' if rel.parts[0] == 'report' else 'compare'})")
            continue
        if path.is_symlink():
            skipped.append(f"{rel} (a symbolic link)")
            continue
        if path.is_file() and not path.name.endswith(".tmp"):
            files.append(rel)
    return files, skipped


def export_run(run_dir: str | Path, out_path: str | Path, *, force: bool = False) -> ExportResult:
    """Write RUN_DIR as one archive at out_path (refusing to replace a file unless force).

    Every file is first copied (or converted) into a staging folder and hashed there, so a run that is
    still being written cannot make an archive whose members disagree with their checksums.
    """
    run = RunDir.open(run_dir)
    out = Path(out_path)
    kind = _archive_kind(out)
    if out.is_dir():
        raise ArchiveError(f"{out} is a directory; give the archive's file name")
    if out.exists() and not force:
        raise ArchiveError(f"{out} already exists (pass --force to replace it)")
    if not out.parent.is_dir():
        raise ArchiveError(f"{out.parent}: no such directory")
    run_name = run.path.resolve().name
    files, skipped = _run_files(run.path)
    notes = []
    status = run.meta().get("status")
    if isinstance(status, str) and status not in ("completed",):
        notes.append(f"the run's status is {status!r}: the archive holds what was recorded so far")
    staging = out.parent / f".{out.name}.export-{os.getpid()}"
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    members: list[dict[str, Any]] = []
    rows: dict[str, int] = {}
    raw_files: list[str] = []
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _, pq = _arrow()
        for rel in files:
            rel_posix = rel.as_posix()
            source = run.path / rel
            table_spec = TABLES.get(rel_posix)
            if table_spec is not None:
                read = read_jsonl(source)
                if not read.bad_lines:
                    member_path, cls = table_spec
                    table, json_columns = rows_to_table(read.rows, cls, rel_posix)
                    target = staging / member_path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    pq.write_table(table, target, compression="zstd")
                    entry = _member(target, member_path, "table", rel_posix)
                    entry.update(rows=len(read.rows), record=cls.__name__, json_columns=json_columns)
                    members.append(entry)
                    rows[rel_posix] = len(read.rows)
                    continue
                notes.append(f"{rel_posix}: {len(read.bad_lines)} unreadable line(s); archived as-is, not as a table")
            meta_file = rel_posix == records.RUN_META_FILE
            member_path = "run.json" if meta_file else f"files/{rel_posix}"
            target = staging / member_path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            members.append(_member(target, member_path, "run_meta" if meta_file else "file", rel_posix))
            if not meta_file:
                raw_files.append(rel_posix)
        manifest = {
            "bench_export_schema_version": EXPORT_SCHEMA_VERSION,
            "bench_version": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run_name": run_name,
            "run_schema_version": records.SCHEMA_VERSION,
            "members": [{k: v for k, v in m.items() if k != "_source"} for m in members],
            "left_out": skipped,
            "notes": notes,
        }
        manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
        _write_archive(tmp, kind, manifest_bytes, members)
        os.replace(tmp, out)
    except OSError as exc:
        raise ArchiveError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        tmp.unlink(missing_ok=True)
    return ExportResult(out, run_name, rows, raw_files, skipped, notes, out.stat().st_size)


def _member(source: Path, member_path: str, kind: str, restore_as: str) -> dict[str, Any]:
    return {
        "path": member_path,
        "kind": kind,
        "restore_as": restore_as,
        "sha256": _sha256_file(source),
        "bytes": source.stat().st_size,
        "_source": source,
    }


def _write_archive(path: Path, kind: str, manifest_bytes: bytes, members: list[dict[str, Any]]) -> None:
    mtime = time.time()
    if kind == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, manifest_bytes)
            for m in members:
                # Parquet is compressed already: storing it saves time and nothing else.
                compress = zipfile.ZIP_STORED if m["kind"] == "table" else zipfile.ZIP_DEFLATED
                zf.write(m["_source"], m["path"], compress_type=compress)
        return
    with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tf:
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(manifest_bytes), mtime, 0o644
        tf.addfile(info, io.BytesIO(manifest_bytes))
        for m in members:
            info = tarfile.TarInfo(m["path"])
            info.size, info.mtime, info.mode = m["bytes"], mtime, 0o644
            with open(m["_source"], "rb") as fh:
                tf.addfile(info, fh)


# ------------------------------------------------------------------ reading an archive

_SAFE_PART = re.compile(r"^[^/\\\x00]+$")


def _safe_relative(path: str) -> bool:
    if not path or path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        return False
    parts = PurePosixPath(path).parts
    return all(_SAFE_PART.match(p) and p not in (".", "..") for p in parts)


class _Archive:
    """Read-only access to a zip or tar archive's regular files by name."""

    def __init__(self, path: Path):
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self.names: list[str] = []
        try:
            if zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
                self.names = [i.filename for i in self._zip.infolist() if not i.is_dir()]
            elif tarfile.is_tarfile(path):
                self._tar = tarfile.open(path, "r:*")
                members = self._tar.getmembers()
                for m in members:
                    if m.isdir():
                        continue
                    if not m.isfile():
                        raise ArchiveError(f"{path}: member {m.name} is not a regular file; refusing the archive")
                    self.names.append(m.name)
            else:
                raise ArchiveError(f"{path}: not a bench export (not a readable .zip or .tar archive)")
        except ArchiveError:
            self.close()
            raise
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            self.close()
            raise ArchiveError(f"{path}: not a readable archive ({_one_line(exc)})") from None
        if len(set(self.names)) != len(self.names):
            self.close()
            raise ArchiveError(f"{path}: the archive names a member twice; refusing it")

    def open(self, name: str):
        if self._zip is not None:
            return self._zip.open(name)
        return self._tar.extractfile(name)

    def read(self, name: str) -> bytes:
        with self.open(name) as fh:
            return fh.read()

    def close(self):
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_manifest(archive: _Archive) -> dict[str, Any]:
    where = archive.path
    if MANIFEST not in archive.names:
        raise ArchiveError(f"{where}: no {MANIFEST}; not a bench export")
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile, zlib.error, tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{where}: {MANIFEST} is unreadable ({_one_line(exc)})") from None
    if not isinstance(manifest, dict):
        raise ArchiveError(f"{where}: {MANIFEST} is not a JSON object")
    version = manifest.get("bench_export_schema_version")
    if version != EXPORT_SCHEMA_VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > EXPORT_SCHEMA_VERSION
        raise ArchiveError(
            f"{where}: export schema version {version!r}, this bench reads version {EXPORT_SCHEMA_VERSION}"
            + (" (made by a newer bench: upgrade bench to import it)" if newer else "")
        )
    name = manifest.get("run_name")
    if not isinstance(name, str) or not _SAFE_PART.match(name) or name.startswith(".") or name in ("..",):
        raise ArchiveError(f"{where}: {MANIFEST} has no usable run_name ({name!r})")
    members = manifest.get("members")
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise ArchiveError(f"{where}: {MANIFEST} has no member list")
    seen_paths, seen_targets = set(), set()
    for m in members:
        path, target = m.get("path"), m.get("restore_as")
        if not (isinstance(path, str) and _safe_relative(path) and isinstance(target, str) and _safe_relative(target)):
            raise ArchiveError(f"{where}: {MANIFEST} lists an unsafe or missing path ({path!r} -> {target!r})")
        if not isinstance(m.get("sha256"), str) or m.get("kind") not in ("run_meta", "table", "file"):
            raise ArchiveError(f"{where}: {MANIFEST} entry {path} lacks its sha256 or kind")
        if path in seen_paths or target in seen_targets or path == MANIFEST:
            raise ArchiveError(f"{where}: {MANIFEST} lists {path} twice")
        seen_paths.add(path)
        seen_targets.add(target)
    if records.RUN_META_FILE not in seen_targets:
        raise ArchiveError(f"{where}: the archive holds no {records.RUN_META_FILE}")
    return manifest


# ------------------------------------------------------------------ import


def import_archive(archive_path: str | Path, into: str | Path = "runs") -> ImportResult:
    """Check every member of the archive, then restore it as `into/<run name>/` (never over an existing one)."""
    archive_path = Path(archive_path)
    if not archive_path.is_file():
        raise ArchiveError(f"{archive_path}: no such file")
    into = Path(into)
    with _Archive(archive_path) as archive:
        manifest = read_manifest(archive)
        members = manifest["members"]
        listed = {m["path"] for m in members} | {MANIFEST}
        for m in members:
            if m["path"] not in archive.names:
                raise ArchiveError(f"{archive_path}: member {m['path']} listed in {MANIFEST} is missing; the archive is incomplete")
        unlisted = [n for n in archive.names if n not in listed]
        if unlisted:
            raise ArchiveError(f"{archive_path}: member {unlisted[0]} is not listed in {MANIFEST}; refusing the archive")
        name = manifest["run_name"]
        target = into / name
        if target.exists():
            raise ArchiveError(f"{target} already exists; import into another folder with --into DIR")
        work = into / f".{name}.import-{os.getpid()}"
        try:
            shutil.rmtree(work, ignore_errors=True)
            (work / "run").mkdir(parents=True)
            extracted = _extract_verified(archive, members, work / "archive")
            rows = _restore(archive_path, members, extracted, work / "run")
            os.replace(work / "run", target)
        except OSError as exc:
            raise ArchiveError(f"cannot import into {into}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    try:
        RunDir.open(target)
    except BenchError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ArchiveError(f"{archive_path}: the restored run is not readable ({exc})") from None
    files = [m["restore_as"] for m in members if m["kind"] == "file"]
    return ImportResult(target, name, rows, files)


def _extract_verified(archive: _Archive, members: list[dict[str, Any]], folder: Path) -> dict[str, Path]:
    """Copy every listed member out of the archive, checking its sha256 and size on the way."""
    out = {}
    for m in members:
        dest = folder / m["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        try:
            with archive.open(m["path"]) as src, dest.open("wb") as fh:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"{archive.path}: member {m['path']} is damaged ({_one_line(exc)})") from None
        if digest.hexdigest() != m["sha256"] or (isinstance(m.get("bytes"), int) and size != m["bytes"]):
            raise ArchiveError(
                f"{archive.path}: member {m['path']} does not match its sha256 in {MANIFEST}; the archive is damaged"
            )
        out[m["path"]] = dest
    return out


def _restore(archive_path: Path, members: list[dict[str, Any]], extracted: dict[str, Path], run_folder: Path) -> dict[str, int]:
    _, pq = _arrow()
    rows: dict[str, int] = {}
    for m in members:
        source, dest = extracted[m["path"]], run_folder / m["restore_as"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if m["kind"] != "table":
            shutil.copyfile(source, dest)
            continue
        try:
            table = pq.read_table(source)
            restored = table_to_rows(table)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds; all mean "this table is unusable"
            raise ArchiveError(f"{archive_path}: table {m['path']} is unreadable ({type(exc).__name__}: {_one_line(exc)})") from None
        if isinstance(m.get("rows"), int) and len(restored) != m["rows"]:
            raise ArchiveError(f"{archive_path}: table {m['path']} holds {len(restored)} rows, {MANIFEST} says {m['rows']}")
        with dest.open("wb") as fh:
            fh.write(jsonl_bytes(restored))
            fh.flush()
            os.fsync(fh.fileno())
        rows[m["restore_as"]] = len(restored)
    return rows
