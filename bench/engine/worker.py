"""The child process that runs one configuration: load, warm up, time every request, unload.

Run as `python -m bench.engine.worker SPEC.json` by the orchestrator (a fresh interpreter, never a
fork: CUDA state does not survive fork). It writes its requests and telemetry straight into the
run directory with durable appends, so whatever it finished survives its own crash, and reports
progress to the parent as JSON lines on the file descriptor named in the spec.

`python -m bench.engine.worker --probe` prints what the installed llama-cpp-python build can do
(GPU offload or not, version) as one JSON object, so the parent can refuse a silent CPU fallback
without loading llama.cpp (and possibly CUDA) into itself.

Exit status: 0 done; 1 a stage failed (the error event says which and why); a signal if it crashed.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.engine.childexit import is_user_error, one_line_typed
from bench import records
from bench.rundir import RunDir, append_jsonl

WARMUP_MAX_TOKENS = 16


@dataclass
class WorkItem:
    rep: int
    request: dict  # TaskRequest fields (messages as a list of dicts)
    mode: str  # "plain" | "constrained"


@dataclass
class WorkerSpec:
    """Everything the child needs; written by the orchestrator as JSON."""

    run_dir: str
    config_id: str
    model_path: str
    model_bytes: int | None
    sha256: str | None
    twin: bool
    n_gpu_layers: int
    flash_attn: str  # auto | on | off
    n_threads: int
    n_ctx: int | None  # None: big enough for the longest prompt plus its max tokens
    temperature: float
    seed: int
    max_tokens_cap: int | None
    reps: int
    constrained: bool
    requests: list[dict]
    skip_keys: list[str] = field(default_factory=list)
    sample_hz: float = 20.0
    gpu_index: int = 0
    host: str | None = None
    gpu_uuid: str | None = None
    events_fd: int | None = None
    warmup: bool = True
    # Scale-out (bench.engine.scaleout, bench.engine.ray_backend): one configuration over several
    # GPUs, and a child that stops once its parent is gone (a Ray task whose process died).
    split_mode: str | None = None  # "layer" | "row": llama.cpp's split over the visible GPUs
    tensor_split: list[float] | None = None  # share of the model per visible GPU
    gpu_indices: list[int] | None = None  # NVML indices to sample when several GPUs are used
    gpu_uuids: list[str] | None = None  # every GPU this configuration runs on
    exit_with_parent: bool = False
    allow_partial: bool = False  # offload only the layers that fit instead of refusing (bench.vram)
    vram_check: bool = True  # predict GPU memory before loading and refuse what does not fit
    # Fast path and throughput mode (bench.engine.parallel), roofline (bench.roofline).
    sampler: str = "auto"  # auto (GPU-side where the layers are on a GPU) | gpu | cpu
    ignore_eos: bool = False  # generate exactly max_tokens (twins: timing only)
    parallel: int = 1  # requests decoded at once, as sequences of one batch
    peak_gbs: float | None = None  # the GPU's peak memory bandwidth, for per-request roofline figures

    @classmethod
    def read(cls, path: str | Path) -> "WorkerSpec":
        data = json.loads(Path(path).read_text())
        return records.from_dict(cls, data)

    def work(self) -> list[WorkItem]:
        """Every timed request of this configuration, repetition-major, minus those recorded."""
        skip = set(self.skip_keys)
        items = []
        for rep in range(self.reps):
            for request in self.requests:
                modes = ["plain"]
                if self.constrained and request["format"] == "json":
                    modes.append("constrained")
                for mode in modes:
                    key = records.request_key(self.config_id, rep, request["request_id"], mode)
                    if key not in skip:
                        items.append(WorkItem(rep, request, mode))
        return items

    def max_tokens(self, request: dict) -> int:
        cap = self.max_tokens_cap
        return min(request["max_tokens"], cap) if cap else request["max_tokens"]


class Events:
    """Progress events to the parent: one JSON object per line on a pipe."""

    def __init__(self, fd: int | None, exit_with_parent: bool = False):
        self._fd = fd
        self._exit_with_parent = exit_with_parent

    def send(self, event: str, **data: Any) -> None:
        if self._fd is None:
            return
        line = (json.dumps({"event": event, **data}, default=str) + "\n").encode()
        try:
            os.write(self._fd, line)
        except OSError:
            self._fd = None  # the parent went away; keep working, records still land on disk
            if self._exit_with_parent:
                raise SystemExit("the parent process is gone")


class RunLog:
    """This configuration's lines in the run's log.txt, each tagged with its config id."""

    def __init__(self, run: RunDir, config_id: str):
        self._path = run.file(records.LOG_FILE)
        self._tag = f"[{config_id}]"

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = f"{stamp} {self._tag} {message}\n".encode("utf-8", errors="replace")
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write per line: lines from parent and child never interleave
        finally:
            os.close(fd)


def append_jsonl_many(path: Path, rows: list[dict]) -> None:
    """Append several JSON lines in one write and one fsync (telemetry arrives in batches)."""
    if not rows:
        return
    data = "".join(json.dumps(r, allow_nan=False, default=str) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


class _Stage:
    def __init__(self, events: Events):
        self.name = "load"
        self._events = events

    def enter(self, name: str) -> None:
        self.name = name
        self._events.send("stage", stage=name)


def run(spec: WorkerSpec) -> int:
    run_dir = RunDir(spec.run_dir)
    events = Events(spec.events_fd, spec.exit_with_parent)
    log = RunLog(run_dir, spec.config_id)
    stage = _Stage(events)
    sampler = None
    engine = None
    try:
        from bench.engine import generate as gen
        from bench.engine.chat import ChatPrompter
        from bench.engine.stats import request_timing

        stage.enter("load")
        buffer_lines: list[str] = []  # llama.cpp's "... buffer size = N MiB" lines, for the VRAM check

        def llama_sink(line: str) -> None:
            if "buffer size" in line:
                buffer_lines.append(line)
            log(f"llama.cpp: {line}")

        llama_log = gen.LlamaLog(llama_sink, debug=bool(os.environ.get("BENCH_LLAMA_DEBUG")))
        if spec.n_gpu_layers != 0 and not gen.supports_gpu_offload():
            # The parent checks this too; a second check here costs nothing and guards direct use.
            raise gen.EngineError(
                "this llama-cpp-python build cannot offload to a GPU; reinstall it with CUDA: "
                + gen.REINSTALL_CUDA
            )
        sampler = _start_sampler(spec, run_dir, log, events)
        t_load = time.perf_counter()
        engine = gen.Engine(llama_log)
        n_gpu_layers = spec.n_gpu_layers
        guard = _vram_guard(spec, log)
        if guard is not None:
            # Refuse (or, with allow_partial, shrink) before loading: a clear line, not a CUDA crash.
            n_gpu_layers = guard.before_load(n_gpu_layers, spec.n_ctx or _context_guess(spec))
        facts = engine.load_model(spec.model_path, n_gpu_layers, **_split_args(spec))
        log(
            f"loaded {spec.model_path}: {facts.desc}; layers on GPU {facts.n_layers_offloaded}/"
            f"{facts.n_layers_total} ({facts.device})"
        )
        prompter = ChatPrompter(facts.chat_template, facts.bos_token, facts.eos_token)
        if prompter.label != "gguf":
            log(f"warning: {spec.model_path} has no chat template; prompts use the ChatML fallback")
        prompts = {}
        prompt_texts = {}  # the exact rendered prompt, stored with each record (bench crosscheck sends it)
        for request in spec.requests:
            text = prompter.render(request["messages"]).text
            prompt_texts[request["request_id"]] = text
            prompts[request["request_id"]] = engine.tokenize(text, facts.add_bos, facts.bos_id)
        n_ctx = spec.n_ctx or _context_size(spec, prompts)
        if spec.n_ctx and spec.n_ctx < _context_size(spec, prompts, slack=0):
            raise gen.EngineError(
                f"--n-ctx {spec.n_ctx} is too small: the longest prompt plus its max tokens needs "
                f"{_context_size(spec, prompts, slack=0)} (leave --n-ctx out to size it automatically)"
            )
        if guard is not None:
            fitting = guard.before_context(n_gpu_layers, n_ctx * max(1, spec.parallel))  # the real size now
            if fitting != n_gpu_layers:
                engine.close()
                n_gpu_layers = fitting
                facts = engine.load_model(spec.model_path, n_gpu_layers, **_split_args(spec))
        n_seq = max(1, spec.parallel)
        flash_attn = engine.create_context(n_ctx * n_seq, spec.n_threads, spec.flash_attn, n_seq_max=n_seq)
        load_time_s = time.perf_counter() - t_load
        run_sampler = _choose_sampler(gen, engine, spec, facts.device, n_seq, log)
        loaded = {
            "device": facts.device,
            "n_gpu_layers_requested": spec.n_gpu_layers,
            "n_layers_offloaded": facts.n_layers_offloaded,
            "n_layers_total": facts.n_layers_total,
            "flash_attn": flash_attn,
            "n_ctx": engine.n_ctx,
            "n_threads": spec.n_threads,
            "sampler": run_sampler.name,
            "parallel": n_seq,
            "model_size_bytes": facts.size_bytes,
            "chat_template": prompter.label,
            "load_time_s": load_time_s,
            "model_desc": facts.desc,
            "model_params": facts.n_params,
            "nvml": bool(sampler and sampler.nvml_available),
            "nvml_reason": _nvml_reason(spec, sampler),
        }
        events.send("loaded", **loaded)
        log(
            f"context n_ctx={engine.n_ctx} threads={spec.n_threads} flash_attn={flash_attn} "
            f"load {load_time_s:.2f} s"
        )

        work = spec.work()
        grammars: dict[str, str] = {}

        def grammar_for(item: WorkItem) -> str | None:
            if item.mode != "constrained":
                return None
            level = item.request["level"]
            if level not in grammars:
                grammars[level] = gen.schema_grammar(item.request["schema"])
            return grammars[level]

        if spec.warmup and spec.requests:
            stage.enter("warmup")
            first = spec.requests[0]
            engine.generate(prompts[first["request_id"]], min(WARMUP_MAX_TOKENS, spec.max_tokens(first)),
                            run_sampler, ignore_eos=spec.ignore_eos)

        if guard is not None:
            # Measured after the warm-up, so lazily allocated buffers (cuBLAS workspace) count too.
            vram = guard.after_load(facts.n_layers_offloaded, facts.n_layers_total, buffer_lines)
            events.send("vram", extra=vram)
            if vram.get("spill"):
                log(f"warning: spill: {vram['spill']}")
            log(f"VRAM: predicted {_mib(vram.get('vram_predicted_bytes'))}, measured "
                f"{_mib(vram.get('vram_measured_bytes'))} ({vram.get('vram_measured_source')}), error "
                f"{vram.get('vram_prediction_error_pct')} %")

        stage.enter("generate")
        events.send("plan", total=len(work))
        generations = _generations(engine, spec, work, prompts, run_sampler, grammar_for)
        for done, (item, g) in enumerate(generations, start=1):
            request = item.request
            max_tokens = spec.max_tokens(request)
            timing = request_timing(g.t_start_ns, g.token_times_ns, g.n_prompt_tokens, g.t_done_ns)
            record = records.RequestRecord(
                config_id=spec.config_id,
                rep=item.rep,
                request_id=request["request_id"],
                item_id=request["item_id"],
                variant=request["variant"],
                level=request["level"],
                format=request["format"],
                mode=item.mode,
                twin=spec.twin,
                n_prompt_tokens=g.n_prompt_tokens,
                n_gen_tokens=len(g.token_ids),
                finish_reason=g.finish_reason,
                output=g.text,
                ttft_ms=timing.ttft_ms,
                latency_ms=timing.latency_ms,
                prefill_tps=timing.prefill_tps,
                decode_tps=timing.decode_tps,
                itl_p50_ms=timing.itl_p50_ms,
                itl_p90_ms=timing.itl_p90_ms,
                itl_p99_ms=timing.itl_p99_ms,
                token_times_ms=timing.token_times_ms,
                seed=spec.seed,
                temperature=spec.temperature,
                max_tokens=max_tokens,
                t_start_unix=g.t_start_unix,
                t_end_unix=g.t_end_unix,
                gpu_uuid=spec.gpu_uuid,
                host=spec.host,
                extra={"sampler": g.extra.get("sampler", run_sampler.name),
                       "done_ms": (g.t_done_ns - g.t_start_ns) / 1e6,
                       "prompt": prompt_texts[request["request_id"]], "add_bos": facts.add_bos,
                       "bos_token": facts.bos_token},
            )
            if spec.ignore_eos:
                record.extra["ignore_eos"] = True
            for key in ("parallel", "slot", "group", "aggregate_tps", "aggregate_decode_tps"):
                if key in g.extra:
                    record.extra[key] = g.extra[key]
            record.extra.update(_request_roofline(facts.size_bytes, timing.decode_tps, spec.peak_gbs))
            _add_energy(record, sampler, g)
            if n_seq > 1 and record.energy_j is not None:
                # Concurrent requests share the GPU: each window holds the others' energy too.
                record.extra["energy_window_shared"] = True
            if spec.gpu_uuids:
                record.extra["gpu_uuids"] = spec.gpu_uuids
            run_dir.append(records.REQUESTS_FILE, record)
            events.send(
                "request", key=record.key, done=done, total=len(work), decode_tps=record.decode_tps,
                ttft_ms=record.ttft_ms, n_gen_tokens=record.n_gen_tokens, energy_per_token_j=record.energy_per_token_j,
            )

        stage.enter("unload")
        engine.close()
        engine = None
        peaks = _peaks(sampler)
        if sampler is not None:
            sampler.stop()
        events.send("done", n_requests=len(work), **peaks)
        log(f"done: {len(work)} requests")
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an event and exit code 1
        message = one_line_typed(exc)
        log(f"failed during {stage.name}: {message}")
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)) and not is_user_error(exc):
            for line in traceback.format_exc().splitlines()[-8:]:
                log(f"  {line}")
        events.send("error", stage=stage.name, error=message)
        if sampler is not None:
            try:
                sampler.stop()
            except Exception:  # noqa: BLE001
                pass
        return 1





def _vram_guard(spec: WorkerSpec, log):
    """The GPU-memory check of this load, or None (CPU runs, check turned off, unreadable file)."""
    if spec.n_gpu_layers == 0 or not spec.vram_check:
        return None
    from bench.vram import VramError, VramGuard

    try:
        return VramGuard(spec.model_path, spec.gpu_index, spec.allow_partial,
                         flash_attn=spec.flash_attn != "off", note=log)
    except VramError as exc:  # llama.cpp may still load what bench cannot read: say so, go on
        log(f"warning: VRAM not predicted: {exc}")
        return None


def _context_guess(spec: WorkerSpec) -> int:
    """n_ctx before the tokenizer is loaded: ~3 bytes per token of the messages, plus max tokens.
    Only the first fit check uses it; the second uses the real size."""
    need = max((sum(len(str(m.get("content", "")).encode()) for m in r["messages"]) // 3 + spec.max_tokens(r)
                for r in spec.requests), default=512)
    return max(512, -(-(need + 64) // 256) * 256)


def _mib(value) -> str:
    return "?" if value is None else f"{value / 2**20:.0f} MiB"


def _choose_sampler(gen, engine, spec: WorkerSpec, device: str, n_seq: int, log):
    """The sampler every request uses: the chain inside llama.cpp's graph (GPU-side) where wanted
    and accepted, else the CPU chain. Grammar requests always take the CPU chain."""
    cpu = gen.CpuSampler(engine.vocab, spec.temperature, spec.seed)
    want = spec.sampler == "gpu" or (spec.sampler == "auto" and device != "cpu")
    if not want:
        return cpu
    gpu = gen.GpuSampler(engine.vocab, spec.temperature, spec.seed)
    if engine.attach_gpu_sampler(gpu, range(n_seq)):
        return gpu
    if spec.sampler == "gpu":
        raise gen.EngineError("llama.cpp refused the GPU-side sampler (llama_set_sampler); use --sampler cpu")
    log("llama.cpp refused the GPU-side sampler; sampling on the CPU")
    return cpu


def _generations(engine, spec: WorkerSpec, work: list[WorkItem], prompts: dict, sampler, grammar_for):
    """(item, Generation) for every work item: one at a time, or `spec.parallel` at once."""
    if spec.parallel <= 1:
        for item in work:
            request = item.request
            yield item, engine.generate(prompts[request["request_id"]], spec.max_tokens(request), sampler,
                                        grammar_for(item), ignore_eos=spec.ignore_eos)
        return
    from bench.engine.parallel import ParallelDecoder

    with ParallelDecoder(engine, spec.parallel) as decoder:
        for group, start in enumerate(range(0, len(work), spec.parallel)):
            items = work[start:start + spec.parallel]
            result = decoder.generate(
                [prompts[i.request["request_id"]] for i in items], [spec.max_tokens(i.request) for i in items],
                sampler, [grammar_for(i) for i in items], ignore_eos=spec.ignore_eos,
            )
            for item, g in zip(items, result.generations):
                g.extra.update(group=group, aggregate_tps=result.aggregate_tps,
                               aggregate_decode_tps=result.aggregate_decode_tps)
                yield item, g


def _request_roofline(model_bytes: int | None, decode_tps: float | None, peak_gbs: float | None) -> dict:
    from bench.roofline import request_figures

    return request_figures(model_bytes, decode_tps, peak_gbs)


def _context_size(spec: WorkerSpec, prompts: dict[str, list[int]], slack: int = 16) -> int:
    """Cells for the longest prompt plus its max tokens; with slack, rounded up to 256 (min 512)."""
    need = max((len(prompts[r["request_id"]]) + spec.max_tokens(r) for r in spec.requests), default=512)
    if not slack:
        return need
    need += slack  # BOS added by the engine, a stray special token
    return max(512, -(-need // 256) * 256)


def _start_sampler(spec: WorkerSpec, run_dir: RunDir, log, events: Events):
    if not spec.sample_hz:
        return None
    from hwprobe.sampler import TelemetrySampler

    path = run_dir.file(records.TELEMETRY_FILE)

    def sink(batch: list[dict]) -> None:
        append_jsonl_many(path, batch)

    if spec.gpu_indices and len(spec.gpu_indices) > 1:
        from bench.engine.multisampler import MultiGpuSampler

        sampler = MultiGpuSampler([
            TelemetrySampler(hz=spec.sample_hz, gpu_index=i, pid=os.getpid(), config_id=spec.config_id, sink=sink)
            for i in spec.gpu_indices
        ])
    else:
        sampler = TelemetrySampler(hz=spec.sample_hz, gpu_index=spec.gpu_index, pid=os.getpid(),
                                   config_id=spec.config_id, sink=sink)
    sampler.start()  # without NVML it still samples RSS and CPU; the parent says so once
    return sampler


def _split_args(spec: WorkerSpec) -> dict:
    """llama.cpp's split of one model over the GPUs the child sees (CUDA_VISIBLE_DEVICES=a,b)."""
    if not spec.split_mode:
        return {}
    import llama_cpp

    modes = {"layer": llama_cpp.LLAMA_SPLIT_MODE_LAYER, "row": llama_cpp.LLAMA_SPLIT_MODE_ROW}
    return {"split_mode": modes[spec.split_mode], "tensor_split": spec.tensor_split}


def _nvml_reason(spec: WorkerSpec, sampler) -> str | None:
    if not spec.sample_hz:
        return "telemetry off (--sample-hz 0)"
    return None if sampler.nvml_available else sampler.nvml_reason


def _add_energy(record: records.RequestRecord, sampler, g) -> None:
    if sampler is None or not sampler.nvml_available:
        return
    # Sample once at the end so the window's last edge is covered without waiting a tick.
    sampler.sample_now()
    stats = sampler.window(g.t_start_unix, g.t_end_unix)
    record.energy_j = stats.energy_j
    record.power_mean_w = stats.power_mean_w
    record.power_peak_w = stats.power_peak_w
    if stats.energy_j is not None and record.n_gen_tokens:
        record.energy_per_token_j = stats.energy_j / record.n_gen_tokens
    record.extra["energy_source"] = stats.energy_source
    record.extra["telemetry_samples"] = stats.n_samples


def _peaks(sampler) -> dict:
    # ru_maxrss is the exact peak (KiB on Linux); the sampler only sees its ticks.
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peaks = {"peak_rss_bytes": peak_rss, "peak_vram_bytes": None, "peak_vram_source": None}
    if sampler is not None and sampler.nvml_available:
        stats = sampler.window(0.0, time.time())
        if stats.peak_proc_mem_bytes is not None:
            peaks.update(peak_vram_bytes=stats.peak_proc_mem_bytes, peak_vram_source="process")
        elif stats.peak_mem_used_bytes is not None:
            peaks.update(peak_vram_bytes=stats.peak_mem_used_bytes, peak_vram_source="device")
    return peaks


def probe() -> dict:
    """What this llama-cpp-python build can do, without loading a model."""
    facts: dict[str, Any] = {"importable": False}
    try:
        import llama_cpp
    except Exception as exc:  # noqa: BLE001
        facts["error"] = one_line_typed(exc)
        return facts
    facts["importable"] = True
    facts["version"] = getattr(llama_cpp, "__version__", None)
    facts["supports_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    try:
        facts["system_info"] = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    except Exception:  # noqa: BLE001
        facts["system_info"] = None
    return facts


def main(argv: list[str]) -> int:
    if argv[:1] == ["--probe"]:
        print(json.dumps(probe()))
        return 0
    if len(argv) != 1:
        print("usage: python -m bench.engine.worker SPEC.json | --probe", file=sys.stderr)
        return 2
    spec = WorkerSpec.read(argv[0])
    return run(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
