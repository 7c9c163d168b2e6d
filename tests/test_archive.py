"""`bench export` / `bench import`: a run survives the archive record for record, and a bad archive is refused.

The synthetic run is written through bench.rundir and bench.records as `bench profile` and `bench score` write
one, plus what a round trip could get wrong: floats at the edges of float64 (-0.0, the smallest subnormal, the
largest double, 0.1 + 0.2), an int in a float field, a bool where a float belongs, a field this bench does not
know, a line without a field it does know, nested metrics, non-ASCII text, a twin, throughput records, a
truncated last line in another helper's JSONL, and files the archive carries as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from bench import records
from bench.archive import EXPORT_SCHEMA_VERSION, MANIFEST, ArchiveError, export_run, import_archive
from bench.rundir import RunDir, append_jsonl, new_run_dir

AWKWARD_FLOATS = [-0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, 1 / 3, 123456789.123456789]
GIB = 1024**3


def _request(config_id: str, j: int, *, twin: bool = False, parallel: int | None = None) -> records.RequestRecord:
    t0 = 1_700_000_000.0 + 7.25 * j
    return records.RequestRecord(
        config_id=config_id, rep=j % 2, request_id=f"item{j}/brief_json", item_id=f"item{j}", variant="brief_json",
        level="brief", format="json", mode="plain" if j % 3 else "constrained", twin=twin,
        n_prompt_tokens=300 + j, n_gen_tokens=5, finish_reason="stop" if j % 4 else "length",
        output=f'{{"name": "Café №{j}", "note": "naïve — 😀\\nline"}}',
        ttft_ms=12.5 + j / 7, latency_ms=100.0 + j / 3, prefill_tps=None if j == 1 else 2400.0 + j,
        decode_tps=None if j == 1 else 88.125 + j / 9, itl_p50_ms=4.0, itl_p90_ms=None, itl_p99_ms=5.5,
        token_times_ms=[12.5 + j / 7, *AWKWARD_FLOATS],
        seed=1234, temperature=0.0, max_tokens=64, t_start_unix=t0, t_end_unix=t0 + 0.1,
        energy_j=None if twin else 3.0 + AWKWARD_FLOATS[j % len(AWKWARD_FLOATS)] % 1,
        energy_per_token_j=None if twin else 0.6, power_mean_w=210.5, power_peak_w=250.0,
        gpu_uuid="GPU-1234", host="hostA",
        extra={"parallel": parallel, "slot": j % parallel} if parallel else {"sampler": "cpu", "nested": {"a": [1, 2.5, None]}},
    )


def build_archive_run(base: Path, name: str | None = None) -> Path:
    """A run directory with every kind of record and file an archive must carry."""
    path = base / name if name else new_run_dir(base)
    path.mkdir(parents=True, exist_ok=True)
    run = RunDir(path)
    run.write_meta({
        "status": "completed",
        "started_utc": "2026-01-02T03:04:05Z",
        "hardware": {"host": {"hostname": "hostA"}, "gpus": [{"index": 0, "name": "NVIDIA L4", "memory_total_bytes": 24 * GIB}]},
        "configs": [{"config_id": "tiny:1b-q4_K_M", "entry": {"id": "tiny:1b-q4_K_M", "params_b": 1.0}}],
        "options": {"reps": 2, "note": "Ünïcode"},
    })
    for j in range(8):
        rec = _request("tiny:1b-q4_K_M", j, parallel=4 if j >= 6 else None)
        run.append(records.REQUESTS_FILE, rec)
        run.append(records.SCORES_FILE, records.ScoreRecord(
            key=rec.key, config_id=rec.config_id, request_id=rec.request_id, item_id=rec.item_id, variant=rec.variant,
            mode=rec.mode, rep=rec.rep,
            metrics={"rougeL": 0.25 + j / 100, "schema_ok": j % 2 == 0, "json_parse_strict": True,
                     "missing_keys": ["price"] if j % 2 else [], "factual_nli": None},
        ))
    for j in range(3):
        run.append(records.REQUESTS_FILE, _request("tiny:14b-q4_K_M~twin", j, twin=True))
    # Lines a round trip could bend: an int in a float field, a bool in a float field, a key this bench does
    # not know, and a line without `extra` (an older writer): written as raw JSON, as another version would.
    odd = records.to_dict(_request("tiny:1b-q4_K_M", 20))
    odd.update(latency_ms=1000, power_peak_w=True, future_field={"kv": [1, 2]})
    append_jsonl(run.file(records.REQUESTS_FILE), odd)
    older = records.to_dict(_request("tiny:1b-q4_K_M", 21))
    del older["extra"]
    append_jsonl(run.file(records.REQUESTS_FILE), older)
    for j in range(5):
        run.append(records.TELEMETRY_FILE, records.TelemetrySample(
            t_unix=1_700_000_000.0 + j * 0.1, config_id="tiny:1b-q4_K_M" if j else None, rss_bytes=1_000_000 + j,
            cpu_pct=12.5, gpu_index=0, power_w=None if j == 2 else 70.0 + j / 3, energy_mj=123_456_789 + j * 7000,
            mem_used_bytes=3 * GIB, proc_mem_bytes=GIB + j, gpu_util_pct=98.0, sm_clock_mhz=2040,
            throttle_reasons=None if j % 2 else ["sw_power_cap", "hw_slowdown"],
        ))
    run.append(records.CONFIGS_FILE, records.ConfigRecord(
        config_id="tiny:1b-q4_K_M", status="ok", stage="done", n_requests=8, device="gpu", flash_attn=True,
        last_log_lines=["llama_model_loader: loaded", "ok"], peak_vram_bytes=GIB,
    ))
    run.append(records.CONFIGS_FILE, records.ConfigRecord(config_id="tiny:14b-q4_K_M~twin", status="ok", stage="done", n_requests=3, twin=True))
    run.log("profile started — ünïcode")
    (path / "crosscheck").mkdir()
    (path / "crosscheck" / "server.log").write_text("ollama serve: listening on 127.0.0.1:11434\n")
    (path / "sweep.jsonl").write_text('{"n_ctx": 2048, "tps": 90.0}\n{"n_ctx": 4096, "tps": 85.5}\n{"n_ctx": 8')  # cut short
    (path / "extras").mkdir()
    (path / "extras" / "plot.png").write_bytes(bytes(range(256)) * 4)
    (path / ".worker-spec-123.json").write_text("{}")  # a worker's scratch file: not a result
    (path / "report").mkdir()
    (path / "report" / "report.md").write_text("# regenerated\n")
    return path


@pytest.fixture
def run_path(tmp_path):
    return build_archive_run(tmp_path / "runs")


def _rows(path: Path) -> list[list[tuple]]:
    """Each JSON line as its (key, value) pairs in order, floats as their exact repr."""
    def freeze(value):
        if isinstance(value, float):
            return ("float", repr(value))
        if isinstance(value, list):
            return tuple(freeze(v) for v in value)
        if isinstance(value, dict):
            return tuple((k, freeze(v)) for k, v in value.items())
        return (type(value).__name__, value)

    return [list(freeze(json.loads(line))) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz"])
def test_round_trip_is_equal_record_for_record(run_path, tmp_path, suffix):
    archive = tmp_path / f"run{suffix}"
    result = export_run(run_path, archive)
    assert result.rows == {"requests.jsonl": 13, "scores.jsonl": 8, "telemetry.jsonl": 5}
    imported = import_archive(archive, tmp_path / "imported").path
    assert imported == tmp_path / "imported" / run_path.name

    original, restored = RunDir.open(run_path), RunDir.open(imported)
    assert restored.meta() == original.meta()
    assert restored.requests() == original.requests()
    assert restored.scores() == original.scores()
    assert list(restored.telemetry()) == list(original.telemetry())
    assert restored.configs() == original.configs()
    for name in ("requests.jsonl", "scores.jsonl", "telemetry.jsonl"):
        # Same keys in the same order, same values, floats bit for bit; the only allowed change is an int
        # written into a float field coming back as the equal float.
        a, b = _rows(run_path / name), _rows(imported / name)
        assert len(a) == len(b)
        for row_a, row_b in zip(a, b):
            assert [k for k, _ in row_a] == [k for k, _ in row_b]
            for (key, va), (_, vb) in zip(row_a, row_b):
                if va != vb:
                    assert va[0] == "int" and vb[0] == "float" and float(va[1]) == float(vb[1]), key
    odd = next(r for r in restored.requests() if r.request_id == "item20/brief_json")
    assert odd.power_peak_w is True  # not 1.0: a bool stays a bool
    raw_odd = json.loads((imported / "requests.jsonl").read_bytes().splitlines()[11])
    assert raw_odd["future_field"] == {"kv": [1, 2]}
    raw_older = json.loads((imported / "requests.jsonl").read_bytes().splitlines()[12])
    assert "extra" not in raw_older
    # Files carried as they are come back byte for byte; scratch files and regenerated reports stay out.
    for rel in ("run.json", "configs.jsonl", "log.txt", "crosscheck/server.log", "sweep.jsonl", "extras/plot.png"):
        assert (imported / rel).read_bytes() == (run_path / rel).read_bytes(), rel
    assert not (imported / ".worker-spec-123.json").exists()
    assert not (imported / "report").exists()
    assert any("report/" in line for line in result.skipped)


def test_scores_and_telemetry_files_come_back_byte_for_byte(run_path, tmp_path):
    export_run(run_path, tmp_path / "run.zip")
    imported = import_archive(tmp_path / "run.zip", tmp_path / "imported").path
    for name in ("scores.jsonl", "telemetry.jsonl"):
        assert (imported / name).read_bytes() == (run_path / name).read_bytes()


def test_archive_is_self_describing_and_pandas_reads_its_tables(run_path, tmp_path):
    import pandas as pd

    export_run(run_path, tmp_path / "run.zip")
    with zipfile.ZipFile(tmp_path / "run.zip") as zf:
        manifest = json.loads(zf.read(MANIFEST))
        assert manifest["bench_export_schema_version"] == EXPORT_SCHEMA_VERSION
        assert manifest["run_name"] == run_path.name and manifest["bench_version"] and manifest["created_utc"]
        paths = {m["path"]: m for m in manifest["members"]}
        assert set(paths) == {
            "run.json", "tables/requests.parquet", "tables/scores.parquet", "tables/telemetry.parquet",
            "files/configs.jsonl", "files/log.txt", "files/crosscheck/server.log", "files/sweep.jsonl",
            "files/extras/plot.png",
        }
        for member in manifest["members"]:
            assert hashlib.sha256(zf.read(member["path"])).hexdigest() == member["sha256"]
        requests = pd.read_parquet(io.BytesIO(zf.read("tables/requests.parquet")))
        telemetry = pd.read_parquet(io.BytesIO(zf.read("tables/telemetry.parquet")))
    assert len(requests) == 13 and list(requests["token_times_ms"].iloc[0]) == [12.5, *AWKWARD_FLOATS]
    assert requests["decode_tps"].dtype == "float64" and requests["seed"].dtype == "int64"
    assert json.loads(requests["extra"].iloc[6]) == {"parallel": 4, "slot": 2}
    assert list(telemetry["throttle_reasons"].iloc[0]) == ["sw_power_cap", "hw_slowdown"]
    # sweep.jsonl's last line is cut short: it travels as-is rather than as a table that would drop it.
    assert paths["files/sweep.jsonl"]["kind"] == "file"


def test_imported_run_reports_like_the_local_one(run_path, tmp_path):
    from reports.aggregate import load_run

    export_run(run_path, tmp_path / "run.zip")
    imported = import_archive(tmp_path / "run.zip", tmp_path / "imported").path
    a, b = load_run(run_path).frame(), load_run(imported).frame()
    assert a.equals(b)


@pytest.fixture
def archive(run_path, tmp_path) -> Path:
    path = tmp_path / "good.zip"
    export_run(run_path, path)
    return path


def _rewrite_zip(source: Path, dest: Path, change) -> Path:
    """Copy a zip member by member; change(name, data) returns new data, or None to drop the member."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dest


def _with_manifest(source: Path, dest: Path, edit) -> Path:
    def change(name, data):
        if name != MANIFEST:
            return data
        manifest = json.loads(data)
        edit(manifest)
        return json.dumps(manifest).encode()

    return _rewrite_zip(source, dest, change)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _flip_last_byte(name, data):
    return data[:-1] + bytes([data[-1] ^ 1]) if name == "tables/requests.parquet" else data


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda src, dst: _write(dst, b"this is not an archive at all"), "not a bench export"),
        (lambda src, dst: _write(dst, src.read_bytes()[: len(src.read_bytes()) // 2]), "not"),
        (lambda src, dst: _rewrite_zip(src, dst, _flip_last_byte), "tables/requests.parquet does not match its sha256"),
        (lambda src, dst: _rewrite_zip(src, dst, lambda n, d: None if n == "files/log.txt" else d), "member files/log.txt listed in manifest.json is missing"),
        (lambda src, dst: _rewrite_zip(src, dst, lambda n, d: None if n == MANIFEST else d), "no manifest.json"),
        (lambda src, dst: _with_manifest(src, dst, lambda m: m.update(bench_export_schema_version=2)), "export schema version 2, this bench reads version 1 (made by a newer bench"),
        (lambda src, dst: _with_manifest(src, dst, lambda m: m.update(bench_export_schema_version="1")), "export schema version '1'"),
        (lambda src, dst: _with_manifest(src, dst, lambda m: m["members"][-1].update(restore_as="../escaped.txt")), "unsafe"),
        (lambda src, dst: _with_manifest(src, dst, lambda m: m["members"].pop()), "is not listed in manifest.json"),
    ],
    ids=["not-an-archive", "truncated", "sha-mismatch", "missing-member", "no-manifest", "newer-version", "bad-version", "path-escape", "unlisted-member"],
)
def test_bad_archives_are_refused_and_leave_nothing_behind(archive, tmp_path, make, message):
    bad = make(archive, tmp_path / "bad.zip")
    into = tmp_path / "into"
    with pytest.raises(ArchiveError) as raised:
        import_archive(bad, into)
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert not into.exists() or list(into.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_tar_with_a_link_is_refused(tmp_path):
    bad = tmp_path / "link.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo(MANIFEST)
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ArchiveError, match="not a regular file"):
        import_archive(bad, tmp_path / "into")


def test_import_never_replaces_a_run_and_export_never_replaces_a_file(archive, run_path, tmp_path):
    into = tmp_path / "into"
    first = import_archive(archive, into).path
    (first / "mine.txt").write_text("keep me")
    with pytest.raises(ArchiveError, match="already exists; import into another folder with --into DIR"):
        import_archive(archive, into)
    assert (first / "mine.txt").read_text() == "keep me"
    with pytest.raises(ArchiveError, match="already exists"):
        export_run(run_path, archive)
    before = archive.read_bytes()
    export_run(run_path, archive, force=True)
    assert zipfile.is_zipfile(archive) and len(archive.read_bytes()) == len(before)
    with pytest.raises(ArchiveError, match="unknown archive type"):
        export_run(run_path, tmp_path / "run.rar")


# ------------------------------------------------------------------ through the CLI


def _bench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_export_and_import(run_path, tmp_path):
    # Stand-in files shaped like no real sweep output: other report sections read sweep.jsonl themselves.
    (run_path / "sweep.jsonl").unlink()
    result = _bench("export", str(run_path), "-o", "shared.tar.gz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "13 requests, 8 scores, 5 telemetry" in result.stdout
    result = _bench("import", "shared.tar.gz", "--into", "theirs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    restored = tmp_path / "theirs" / run_path.name
    assert RunDir.open(restored).requests() == RunDir.open(run_path).requests()
    report = _bench("report", str(restored), "--format", "md", "--no-plots", cwd=tmp_path)
    assert report.returncode == 0, report.stderr


@pytest.mark.parametrize("version", [2, None])
def test_cli_refuses_a_wrong_version_or_corrupt_archive_in_one_line(archive, tmp_path, version):
    if version is None:
        bad = _rewrite_zip(archive, tmp_path / "bad.zip", _flip_last_byte)
        expected = "does not match its sha256"
    else:
        bad = _with_manifest(archive, tmp_path / "bad.zip", lambda m: m.update(bench_export_schema_version=version))
        expected = "export schema version 2"
    result = _bench("import", str(bad), "--into", "into", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "into").exists() or list((tmp_path / "into").iterdir()) == []
