"""`bench publish` / `bench pull` against the local hub stand-in (tests/hubstub.py), with the real huggingface_hub.

The token must reach the hub as `Authorization: Bearer …` and nowhere else: not in any file written under the
test's folder (runs, imports, the HF cache), not on stdout or stderr, not in an error message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hubstub import HubStub
from test_archive import build_archive_run

from bench.rundir import RunDir

TOKEN = "hf_" + "Pub1ishT0kenForTestsOnly0123456789"
REPO = "alice/bench-runs"


def _env(hub: HubStub, hf_home: Path, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_UPDATE_CHECK="1")
    if token:
        env["HF_TOKEN"] = token
    return env


def _bench(env, *args, cwd):
    result = subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env, cwd=cwd)
    return result


def _assert_secret_nowhere(secret: str, folder: Path, *outputs: str):
    for text in outputs:
        assert secret not in text
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"token written to {path}"


@pytest.fixture
def runs(tmp_path):
    return [build_archive_run(tmp_path / "mine", name) for name in ("20260101T000000Z-hostA", "20260102T000000Z-hostB")]


def test_publish_then_pull_restores_the_run_and_keeps_the_token_secret(runs, tmp_path):
    with HubStub({}, token=TOKEN) as hub:
        env = _env(hub, tmp_path / "hf")
        published = _bench(env, "publish", str(runs[0]), "--repo", REPO, "--private", cwd=tmp_path)
        assert published.returncode == 0, published.stderr
        assert f"runs/{runs[0].name}.zip" in published.stdout
        assert set(hub.datasets[REPO]) == {f"runs/{runs[0].name}.zip"}
        assert hub.created[0]["type"] == "dataset" and hub.created[0]["visibility"] == "private"
        writes = [r for r in hub.requests if r.method == "POST"]
        assert [r.path for r in writes] == [
            "/api/repos/create", f"/api/datasets/{REPO}/preupload/main", f"/api/datasets/{REPO}/commit/main",
        ]
        assert all(r.authorization == f"Bearer {TOKEN}" for r in writes)
        assert hub.commits[0]["summary"] == f"bench publish {runs[0].name}"

        pulled = _bench(env, "pull", REPO, "--into", "theirs", cwd=tmp_path)
        assert pulled.returncode == 0, pulled.stderr
        restored = tmp_path / "theirs" / runs[0].name
        original = RunDir.open(runs[0])
        assert RunDir.open(restored).requests() == original.requests()
        assert RunDir.open(restored).scores() == original.scores()
        assert list(RunDir.open(restored).telemetry()) == list(original.telemetry())

        compared = _bench(env, "compare", str(runs[0]), str(restored), "--format", "md", "--out", "cmp", cwd=tmp_path)
        assert compared.returncode == 0, compared.stderr
        _assert_secret_nowhere(TOKEN, tmp_path, published.stdout, published.stderr, pulled.stdout, pulled.stderr,
                               compared.stdout, compared.stderr)


def test_pull_picks_runs_by_name_and_never_overwrites(runs, tmp_path):
    with HubStub({}, token=TOKEN) as hub:
        env = _env(hub, tmp_path / "hf")
        for run in runs:
            assert _bench(env, "publish", str(run), "--repo", REPO, cwd=tmp_path).returncode == 0
        assert len(hub.created) == 2  # the second create_repo met a 409 and went on (exist_ok)
        one = _bench(env, "pull", REPO, "--into", "theirs", "--run", runs[1].name, cwd=tmp_path)
        assert one.returncode == 0, one.stderr
        assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == [runs[1].name]
        (tmp_path / "theirs" / runs[1].name / "notes.txt").write_text("mine")
        both = _bench(env, "pull", REPO, "--into", "theirs", cwd=tmp_path)
        assert both.returncode == 0, both.stderr
        assert "already exists" in both.stdout
        assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == sorted(r.name for r in runs)
        assert (tmp_path / "theirs" / runs[1].name / "notes.txt").read_text() == "mine"
        missing = _bench(env, "pull", REPO, "--run", "nope", cwd=tmp_path)
        assert missing.returncode == 2
        assert missing.stderr.strip() == f"error: no run 'nope' in {REPO} (it has: {runs[0].name}, {runs[1].name})"


def test_publish_without_a_token_is_refused_before_any_request(runs, tmp_path):
    with HubStub({}, token=TOKEN) as hub:
        result = _bench(_env(hub, tmp_path / "hf", token=None), "publish", str(runs[0]), "--repo", REPO, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip() == "error: no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token)"
        assert hub.requests == []


def test_a_refused_token_is_scrubbed_from_the_one_line_error(runs, tmp_path):
    wrong = "hf_" + "WrongT0kenThatMustNotLeak987654"
    with HubStub({}, token=TOKEN, echo_auth=True) as hub:
        result = _bench(_env(hub, tmp_path / "hf", token=wrong), "publish", str(runs[0]), "--repo", REPO, cwd=tmp_path)
        assert any(r.authorization == f"Bearer {wrong}" for r in hub.requests)  # the hub did quote it back
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot create dataset repo {REPO}: the hub answered HTTP 401")
    assert "Traceback" not in result.stderr
    _assert_secret_nowhere(wrong, tmp_path, result.stdout, result.stderr)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["pull", "alice/nothing-here"], "error: cannot list alice/nothing-here: dataset repo alice/nothing-here not found"),
        (["pull", "not-a-repo-id"], "error: the repo must be OWNER/NAME"),
        (["pull", "alice/empty"], "error: alice/empty holds no published run"),
    ],
)
def test_pull_errors_are_one_line(tmp_path, args, expected):
    with HubStub({}, datasets={"alice/empty": {"README.md": b"# nothing yet\n"}}) as hub:
        result = _bench(_env(hub, tmp_path / "hf", token=None), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(expected), result.stderr
