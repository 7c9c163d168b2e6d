"""The child process of `bench sweep`: one load of one configuration, every KV depth measured once.

Run as `python -m bench.sweep.child SPEC.json` (a fresh interpreter, as the profile worker is). It
uses the profile engine's timed generation loop (`Engine._run`, the same per-token sample + decode
calls, so sweep and profile decode rates are comparable), and measures each depth as llama-bench's
`-d` does:

1. clear the KV cache and fill it with `depth` random tokens (untimed; BOS first where the model
   wants one);
2. time a prefill of `n_prompt` random tokens on top of them (in `n_batch` chunks), up to the first
   sampled token: prefill_tps = n_prompt / that time;
3. drop the prefill tokens again (llama_memory_seq_rm; refill when the cache cannot drop a part),
   so the cache holds exactly `depth` tokens, and check it (llama_memory_seq_pos_max);
4. time `n_gen` greedily generated tokens, end-of-generation ignored so every test makes exactly
   n_gen (as llama-bench's tg): decode_tps = (n_gen - 1) / (last token - first token), as
   `bench profile`. Sampling runs where profile's does: in the graph ("GPU" backend sampler) on a
   GPU when llama.cpp accepts it, else llama.cpp's CPU chain.

Each measurement is appended to sweep.jsonl as soon as it is made. Progress goes to the parent as
JSON lines on the file descriptor named in the spec. Exit status: 0 done; 1 a stage failed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.engine.childexit import is_user_error, one_line_typed
from bench import records
from bench.engine.worker import Events, RunLog, append_jsonl_many
from bench.rundir import RunDir, append_jsonl
from bench.sweep.records import SWEEP_FILE, SweepRecord

WARMUP_GEN_TOKENS = 8


@dataclass
class BlockSpec:
    """One block (a configuration at one repetition); written by the parent as JSON."""

    run_dir: str
    config_id: str
    model_id: str
    settings: dict
    model_path: str
    n_gpu_layers: int  # what to load with (the setting, or fewer where --allow-partial cut it)
    depths: list[int]  # in the order to measure them
    rep: int
    n_prompt: int
    n_gen: int
    n_ctx: int
    seed: int
    delay_s: float = 0.0
    warmup: bool = True
    sample_hz: float = 10.0
    gpu_index: int = 0
    gpu_uuid: str | None = None
    gpu_name: str | None = None
    host: str | None = None
    events_fd: int | None = None
    vram_prediction: dict | None = None  # VramPrediction.to_dict(), when the parent made one
    extra: dict = field(default_factory=dict)  # copied into every record (e.g. the partial-offload note)

    @classmethod
    def read(cls, path: str | Path) -> "BlockSpec":
        return records.from_dict(cls, json.loads(Path(path).read_text()))


def _engine_class():
    import llama_cpp as ll

    from bench.engine import generate as gen

    class SweepEngine(gen.Engine):
        """The profile engine plus what a sweep needs: a cache that is not cleared between steps."""

        def kv_tokens(self) -> int:
            """Tokens the cache holds for sequence 0 (its highest position + 1)."""
            return int(ll.llama_memory_seq_pos_max(ll.llama_get_memory(self.ctx), 0)) + 1

        def drop_after(self, n_keep: int) -> bool:
            """Forget every position from n_keep on; False where the cache cannot drop a part."""
            return bool(ll.llama_memory_seq_rm(ll.llama_get_memory(self.ctx), 0, n_keep, -1))

        def run_tokens(self, tokens: list[int], max_tokens: int, sampler):
            """The profile loop on the current cache (not cleared): decode `tokens`, then generate
            exactly max_tokens (end-of-generation ignored, as llama-bench's tg), sampling with the
            backend ("GPU") chain when one is attached, as bench profile does on a GPU."""
            chain = self.gpu_chain(0)
            if chain is not None:
                ll.llama_sampler_reset(chain)
                return self._run(tokens, max_tokens, chain, ignore_eos=True)
            chain = sampler.chain(None)
            try:
                return self._run(tokens, max_tokens, chain, ignore_eos=True)
            finally:
                ll.llama_sampler_free(chain)

    return SweepEngine


class TokenSource:
    """Seeded random token ids, like llama-bench's, with BOS first where the model adds one."""

    def __init__(self, n_vocab: int, bos_id: int, add_bos: bool, seed: int):
        import numpy as np

        self._rng = np.random.default_rng(seed)
        self._n_vocab = n_vocab
        self._bos = bos_id if add_bos and bos_id >= 0 else None

    def take(self, n: int, at_start: bool) -> list[int]:
        tokens = [int(t) for t in self._rng.integers(0, self._n_vocab, size=n)]
        if at_start and self._bos is not None and tokens:
            tokens[0] = self._bos
        return tokens


def run(spec: BlockSpec) -> int:
    run_dir = RunDir(spec.run_dir)
    events = Events(spec.events_fd)
    log = RunLog(run_dir, spec.config_id)
    stage = "load"
    sampler = None
    engine = None
    try:
        from bench import vram
        from bench.engine import generate as gen
        from bench.engine.stats import request_timing

        events.send("stage", stage=stage)
        buffer_lines: list[str] = []

        def sink(line: str) -> None:
            if "buffer size" in line:
                buffer_lines.append(line)
            log(f"llama.cpp: {line}")

        llama_log = gen.LlamaLog(sink, debug=bool(os.environ.get("BENCH_LLAMA_DEBUG")))
        on_gpu = spec.n_gpu_layers != 0
        if on_gpu and not gen.supports_gpu_offload():
            raise gen.EngineError("this llama-cpp-python build cannot offload to a GPU; reinstall it with CUDA: "
                                  + gen.REINSTALL_CUDA)
        before = vram.gpu_memory(spec.gpu_index) if on_gpu else None
        sampler = _start_sampler(spec, run_dir)
        engine = _engine_class()(llama_log)
        facts = engine.load_model(spec.model_path, spec.n_gpu_layers)
        stage = "context"
        events.send("stage", stage=stage)
        s = spec.settings
        k_type = vram.kv_type_of(s["kv_type"]).ggml_type
        fa_effective = engine.create_context(spec.n_ctx, int(s["n_threads"]), s["flash_attn"], n_batch=int(s["n_batch"]),
                                             n_ubatch=int(s["n_ubatch"]), type_k=k_type, type_v=k_type)
        greedy = gen.CpuSampler(engine.vocab, 0.0, spec.seed)
        sampler_name = "cpu"
        if facts.device != "cpu" and engine.attach_gpu_sampler(gen.GpuSampler(engine.vocab, 0.0, spec.seed)):
            sampler_name = "gpu"
        log(f"loaded: layers on GPU {facts.n_layers_offloaded}/{facts.n_layers_total} ({facts.device}); "
            f"n_ctx {engine.n_ctx}, flash_attn {fa_effective}, KV {s['kv_type']}")

        stage = "measure"
        events.send("stage", stage=stage)
        tokens = TokenSource(int(_n_vocab(engine)), facts.bos_id, facts.add_bos, spec.seed)
        if spec.warmup:
            engine.clear_cache()
            engine.run_tokens(tokens.take(spec.n_prompt, at_start=True), 1, greedy)
            engine.run_tokens(tokens.take(1, at_start=False), WARMUP_GEN_TOKENS, greedy)

        vram_info: dict[str, Any] = {}
        if on_gpu and spec.vram_prediction:
            after = vram.gpu_memory(spec.gpu_index)
            prediction = vram.VramPrediction(**{**spec.vram_prediction,
                                                "layer_bytes": tuple(spec.vram_prediction.get("layer_bytes", ())),
                                                "notes": tuple(spec.vram_prediction.get("notes", ()))})
            check = vram.vram_check(prediction, before, after, facts.n_layers_offloaded, facts.n_layers_total,
                                    spec.n_gpu_layers, buffer_lines)
            vram_info = check.extra()
        elif on_gpu:
            spill = vram.detect_spill(None, None, facts.n_layers_offloaded, facts.n_layers_total,
                                      n_layers_requested=spec.n_gpu_layers)
            vram_info = {"spill": spill} if spill else {}
        events.send("loaded", device=facts.device, n_layers_offloaded=facts.n_layers_offloaded,
                    n_layers_total=facts.n_layers_total, flash_attn=fa_effective, n_ctx=engine.n_ctx,
                    model_desc=facts.desc, sampler=sampler_name, vram=vram_info)

        for index, depth in enumerate(spec.depths):
            if index and spec.delay_s > 0:
                time.sleep(spec.delay_s)
            record = _measure(engine, greedy, tokens, spec, depth, request_timing, sampler)
            record.extra["sampler"] = sampler_name
            record.flash_attn_effective = fa_effective
            record.n_layers_offloaded = facts.n_layers_offloaded
            record.n_layers_total = facts.n_layers_total
            record.device = facts.device
            record.n_ctx = engine.n_ctx
            record.vram_predicted_bytes = vram_info.get("vram_predicted_bytes")
            record.vram_measured_bytes = vram_info.get("vram_measured_bytes")
            record.spill = vram_info.get("spill")
            append_jsonl(run_dir.file(SWEEP_FILE), asdict(record))
            events.send("measured", key=record.key, depth=depth, prefill_tps=record.prefill_tps,
                        decode_tps=record.decode_tps)

        stage = "unload"
        engine.close()
        engine = None
        if sampler is not None:
            sampler.stop()
        events.send("done", n_measured=len(spec.depths))
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an event and exit code 1
        message = one_line_typed(exc)
        log(f"failed during {stage}: {message}")
        if not is_user_error(exc) and not isinstance(exc, KeyboardInterrupt):
            for line in traceback.format_exc().splitlines()[-8:]:
                log(f"  {line}")
        events.send("error", stage=stage, error=message)
        if sampler is not None:
            try:
                sampler.stop()
            except Exception:  # noqa: BLE001
                pass
        return 1


def _n_vocab(engine) -> int:
    import llama_cpp as ll

    return int(ll.llama_vocab_n_tokens(engine.vocab))


def _measure(engine, sampler, tokens: TokenSource, spec: BlockSpec, depth: int, request_timing,
             telemetry) -> SweepRecord:
    t_unix = time.time()
    engine.clear_cache()
    if depth:
        engine.run_tokens(tokens.take(depth, at_start=True), 1, sampler)  # fill; its sampled token is not decoded
    before_prefill = engine.kv_tokens()
    prefill = engine.run_tokens(tokens.take(spec.n_prompt, at_start=depth == 0), 1, sampler)
    prefill_timing = request_timing(prefill.t_start_ns, prefill.token_times_ns, prefill.n_prompt_tokens,
                                    prefill.t_done_ns)
    if not engine.drop_after(depth):
        engine.clear_cache()  # a cache that cannot drop a tail (some recurrent memories): refill
        if depth:
            engine.run_tokens(tokens.take(depth, at_start=True), 1, sampler)
    before_decode = engine.kv_tokens()
    decode = engine.run_tokens(tokens.take(1, at_start=depth == 0), spec.n_gen, sampler)
    decode_timing = request_timing(decode.t_start_ns, decode.token_times_ns, decode.n_prompt_tokens,
                                   decode.t_done_ns)
    record = SweepRecord(
        config_id=spec.config_id, model_id=spec.model_id, settings=dict(spec.settings), depth=depth,
        n_prompt=spec.n_prompt, n_gen=len(decode.token_ids), prefill_tps=prefill_timing.prefill_tps,
        decode_tps=decode_timing.decode_tps, rep=spec.rep, t_unix=t_unix,
        prefill_ms=prefill_timing.ttft_ms,
        decode_ms=(decode.token_times_ns[-1] - decode.token_times_ns[0]) / 1e6 if len(decode.token_times_ns) > 1 else None,
        kv_tokens_before_prefill=before_prefill, kv_tokens_before_decode=before_decode, seed=spec.seed,
        gpu_uuid=spec.gpu_uuid, gpu_name=spec.gpu_name, host=spec.host, extra=dict(spec.extra),
    )
    if telemetry is not None and telemetry.nvml_available and len(decode.token_times_ns) > 1:
        telemetry.sample_now()
        t0 = decode.t_start_unix + (decode.token_times_ns[0] - decode.t_start_ns) / 1e9
        t1 = decode.t_start_unix + (decode.token_times_ns[-1] - decode.t_start_ns) / 1e9
        window = telemetry.window(t0, t1)
        record.decode_power_mean_w = window.power_mean_w
        if window.energy_j is not None:
            record.decode_energy_per_token_j = window.energy_j / (len(decode.token_ids) - 1)
        record.prefill_energy_j = telemetry.window(prefill.t_start_unix, prefill.t_end_unix).energy_j
    return record


def _start_sampler(spec: BlockSpec, run_dir: RunDir):
    if not spec.sample_hz:
        return None
    from hwprobe.sampler import TelemetrySampler

    path = run_dir.file(records.TELEMETRY_FILE)
    sampler = TelemetrySampler(hz=spec.sample_hz, gpu_index=spec.gpu_index, pid=os.getpid(),
                               config_id=spec.config_id, sink=lambda batch: append_jsonl_many(path, batch))
    sampler.start()
    return sampler




def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.sweep.child SPEC.json", file=sys.stderr)
        return 2
    return run(BlockSpec.read(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
