"""The run directory survives what users and crashes do to it: cut lines, foreign files, old schemas."""

import json
import subprocess
import sys

import pytest

from bench import records
from bench.errors import RunDirError
from bench.rundir import RunDir, append_jsonl, read_jsonl
from tests.test_report_synthetic_run import build_run


def test_a_cut_last_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "x.jsonl"
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"a": 2})
    with path.open("ab") as fh:
        fh.write(b'{"a": 3, "b": "cut mid-wr')  # what a copy taken mid-write looks like
    read = read_jsonl(path)
    assert [r["a"] for r in read.rows] == [1, 2]
    assert read.bad_lines == [3]


def test_appends_are_whole_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    for i in range(50):
        append_jsonl(path, {"i": i, "text": "é" * i})
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line)["i"] for line in lines[:-1]] == list(range(50))


def test_a_foreign_request_line_is_one_clear_error(tmp_path):
    run_path = build_run(tmp_path / "run")
    append_jsonl(run_path / records.REQUESTS_FILE, {"hello": "world"})
    with pytest.raises(RunDirError, match=r"requests.jsonl: record \d+: not a RequestRecord: missing"):
        RunDir.open(run_path).requests()


def test_a_run_of_another_schema_version_is_refused(tmp_path):
    run_path = build_run(tmp_path / "run")
    meta = json.loads((run_path / records.RUN_META_FILE).read_text())
    meta["schema_version"] = 99
    (run_path / records.RUN_META_FILE).write_text(json.dumps(meta))
    with pytest.raises(RunDirError, match="schema version 99"):
        RunDir.open(run_path)


def test_report_skips_foreign_sweep_and_crosscheck_lines(tmp_path):
    run_path = build_run(tmp_path / "run")
    (run_path / "sweep.jsonl").write_text('{"not": "a sweep record"}\n')
    (run_path / "crosscheck").mkdir()
    (run_path / "crosscheck" / "stray.jsonl").write_text('{"not": "a crosscheck record"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "bench", "report", str(run_path), "--format", "md", "--no-plots"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_report_on_a_damaged_requests_file_is_one_line(tmp_path):
    run_path = build_run(tmp_path / "run")
    append_jsonl(run_path / records.REQUESTS_FILE, [1, 2, 3])  # valid JSON, not an object: skipped
    append_jsonl(run_path / records.REQUESTS_FILE, {"config_id": "x"})  # an object of the wrong shape
    result = subprocess.run(
        [sys.executable, "-m", "bench", "report", str(run_path), "--format", "md", "--no-plots"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not a RequestRecord" in result.stderr
    assert "Traceback" not in result.stderr
