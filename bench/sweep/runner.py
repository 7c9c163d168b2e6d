"""The parent side of `bench sweep`: one child process per block, failures recorded, nothing lost.

For each block (a configuration at one repetition) the runner resolves the model file, predicts
the GPU memory the configuration needs and refuses it before loading when it does not fit (or,
with allow_partial, lowers n_gpu_layers), starts `python -m bench.sweep.child SPEC`, follows its
events and writes a ConfigRecord for the load. A load llama.cpp refuses (a quantized V cache
without flash attention, say) or a crashed child costs that block only: its depths get failed
SweepRecords saying why, and the sweep goes on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from bench.engine.childexit import exit_text, one_line, signal_name
from bench import records
from bench.rundir import RunDir, append_jsonl
from bench.sweep.child import BlockSpec
from bench.sweep.grid import Block
from bench.sweep.records import SWEEP_FILE, SweepRecord, done_keys, sweep_key

TERMINATE_GRACE_S = 5.0
LAST_LOG_LINES = 12
KV_SLACK_TOKENS = 16


@dataclass
class SweepOptions:
    """Every option that shapes a sweep; stored in run.json."""

    depths: list[int]
    axes: dict[str, list]
    n_prompt: int = 512
    n_gen: int = 128
    reps: int = 3
    order: str = "random"
    seed: int = 0
    delay_s: float = 0.0
    warmup: bool = True
    allow_partial: bool = False
    device: str = "auto"  # "gpu" | "cpu" once planned
    sample_hz: float = 10.0
    gpu_index: int = 0
    download: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def context_size(depths: list[int], n_prompt: int, n_gen: int) -> int:
    """Cells for the deepest test: depth + the larger of the prefill and the decode (+ slack)."""
    return max(depths) + max(n_prompt, n_gen + 1) + KV_SLACK_TOKENS


class Display:
    """What the runner tells the user; the command passes a rich one, tests may pass this."""

    def block_start(self, index: int, total: int, block: Block) -> None: ...
    def measured(self, block: Block, event: dict) -> None: ...
    def block_end(self, block: Block, record: records.ConfigRecord) -> None: ...
    def note(self, text: str) -> None: ...


class SweepInterrupted(Exception):
    pass


@dataclass
class ResolvedFile:
    path: str
    size_bytes: int | None = None
    sha256: str | None = None


@dataclass
class _ChildState:
    stage: str | None = None
    loaded: dict | None = None
    done: dict | None = None
    error: str | None = None
    measured: list[str] = field(default_factory=list)

    def update(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            self.stage = event.get("stage")
        elif kind == "loaded":
            self.loaded = event
        elif kind == "measured":
            self.measured.append(event.get("key"))
        elif kind == "done":
            self.done = event
        elif kind == "error":
            self.error = event.get("error")
            self.stage = event.get("stage") or self.stage


class SweepRunner:
    def __init__(self, run: RunDir, options: SweepOptions, resolve: Callable[[str], ResolvedFile],
                 display: Display, *, on_gpu: bool, host: str | None = None, gpu_uuid: str | None = None,
                 gpu_name: str | None = None, free_memory: Callable[[], int | None] | None = None):
        self.run = run
        self.options = options
        self.resolve = resolve
        self.display = display
        self.on_gpu = on_gpu
        self.host = host
        self.gpu_uuid = gpu_uuid
        self.gpu_name = gpu_name
        self.free_memory = free_memory or self._nvml_free
        self._files: dict[str, ResolvedFile | Exception] = {}

    # -- the run -------------------------------------------------------------------------------

    def run_blocks(self, blocks: list[Block]) -> list[records.ConfigRecord]:
        done = done_keys(self.run)
        outcomes = []
        for index, block in enumerate(blocks, start=1):
            todo = [d for d in block.depths if sweep_key(block.config.config_id, d, block.rep) not in done]
            if not todo:
                continue
            block = Block(block.rep, block.config, tuple(todo))
            self.display.block_start(index, len(blocks), block)
            record, interrupted = self.run_block(block)
            outcomes.append(record)
            self.display.block_end(block, record)
            if interrupted:
                raise SweepInterrupted(block.config.config_id)
            if self.options.delay_s > 0 and index < len(blocks):
                time.sleep(self.options.delay_s)
        return outcomes

    def run_block(self, block: Block) -> tuple[records.ConfigRecord, bool]:
        t_start = time.time()
        config = block.config
        settings = config.settings
        try:
            resolved = self._resolve(config.model_id)
        except KeyboardInterrupt:
            return self._failed(block, "fetch", t_start, "interrupted (Ctrl-C) while fetching"), True
        except Exception as exc:  # noqa: BLE001 - FetchError, ChecksumError, anything unforeseen
            return self._failed(block, "fetch", t_start, one_line(exc)), False

        n_ctx = context_size(list(block.depths), self.options.n_prompt, self.options.n_gen)
        n_gpu_layers = int(settings["n_gpu_layers"]) if self.on_gpu else 0
        extra: dict[str, Any] = {}
        prediction = None
        if n_gpu_layers != 0:
            from bench import vram

            try:
                prediction = vram.predict_vram(resolved.path, n_ctx, settings["kv_type"], n_gpu_layers,
                                               flash_attn=settings["flash_attn"] != "off",
                                               n_ubatch=min(int(settings["n_ubatch"]), int(settings["n_batch"])))
            except vram.VramError as exc:
                self.display.note(f"{config.config_id}: VRAM not predicted ({exc})")
            if prediction is not None:
                decision = vram.check_fit(prediction, self.free_memory(), self.options.allow_partial)
                if not decision.proceed:
                    return self._failed(block, "fit", t_start, decision.message,
                                        extra={"vram_predicted_bytes": prediction.total_bytes}), False
                if decision.partial:
                    self.display.note(decision.message)
                    extra["partial_offload"] = decision.message
                    n_gpu_layers = decision.n_gpu_layers
                    prediction = vram.predict_vram(resolved.path, n_ctx, settings["kv_type"], n_gpu_layers,
                                                   flash_attn=settings["flash_attn"] != "off",
                                                   n_ubatch=min(int(settings["n_ubatch"]), int(settings["n_batch"])))
        spec = BlockSpec(
            run_dir=str(self.run.path.resolve()), config_id=config.config_id, model_id=config.model_id,
            settings=dict(settings), model_path=resolved.path, n_gpu_layers=n_gpu_layers,
            depths=list(block.depths), rep=block.rep, n_prompt=self.options.n_prompt, n_gen=self.options.n_gen,
            n_ctx=n_ctx, seed=_block_seed(self.options.seed, config.config_id, block.rep),
            delay_s=self.options.delay_s, warmup=self.options.warmup, sample_hz=self.options.sample_hz,
            gpu_index=self.options.gpu_index, gpu_uuid=self.gpu_uuid if self.on_gpu else None,
            gpu_name=self.gpu_name if self.on_gpu else None, host=self.host,
            vram_prediction=prediction.to_dict() if prediction is not None else None, extra=extra,
        )
        return self._spawn(block, spec, resolved, t_start, n_gpu_layers)

    # -- the child -----------------------------------------------------------------------------

    def _spawn(self, block: Block, spec: BlockSpec, resolved: ResolvedFile, t_start: float,
               n_gpu_layers: int) -> tuple[records.ConfigRecord, bool]:
        read_fd, write_fd = os.pipe()
        spec.events_fd = write_fd
        spec_path = self.run.path / f".sweep-spec-{os.getpid()}.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        state = _ChildState()
        interrupted = False
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.sweep.child", str(spec_path)],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, env=_child_env(),
            )
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            spec_path.unlink(missing_ok=True)
            return self._failed(block, "child", t_start, f"could not start the sweep child: {exc}"), False
        os.close(write_fd)
        self.run.log(f"[{spec.config_id}] rep {block.rep}: child pid {proc.pid} started")
        pump = threading.Thread(target=self._pump_output, args=(proc, spec.config_id), daemon=True)
        pump.start()
        try:
            with os.fdopen(read_fd, "rb") as stream:
                for raw in stream:
                    try:
                        event = json.loads(raw)
                    except json.JSONDecodeError:
                        continue
                    state.update(event)
                    if event.get("event") == "measured":
                        self.display.measured(block, event)
            rc = proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            rc = _stop(proc)
        finally:
            pump.join(timeout=5)
            spec_path.unlink(missing_ok=True)
        loaded = state.loaded or {}
        vram_info = loaded.get("vram") or {}
        if rc == 0 and state.done is not None and not interrupted:
            record = self._config_record(block, "ok", "done", t_start, resolved, n_gpu_layers, loaded)
            record.extra.update(vram_info)
            record.extra.update(spec.extra)
            self.run.append(records.CONFIGS_FILE, record)
            if vram_info.get("spill"):
                self.display.note(f"{spec.config_id}: spill: {vram_info['spill']}")
            return record, False
        error = "interrupted (Ctrl-C)" if interrupted else (state.error or exit_text(rc, "sweep child"))
        record = self._failed(block, state.stage or "child", t_start, error, rc=rc, resolved=resolved,
                              n_gpu_layers=n_gpu_layers, loaded=loaded, measured=set(state.measured),
                              extra={**vram_info, **spec.extra}, interrupted=interrupted)
        return record, interrupted

    def _pump_output(self, proc: subprocess.Popen, config_id: str) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self.run.log(f"[{config_id}] stderr: {line}")

    # -- records -------------------------------------------------------------------------------

    def _config_record(self, block: Block, status: str, stage: str, t_start: float,
                       resolved: ResolvedFile | None, n_gpu_layers: int | None, loaded: dict) -> records.ConfigRecord:
        s = block.config.settings
        return records.ConfigRecord(
            config_id=block.config.config_id, status=status, stage=stage,
            n_requests=len(block.depths) if status == "ok" else 0,
            model_path=resolved.path if resolved else None, model_bytes=resolved.size_bytes if resolved else None,
            sha256=resolved.sha256 if resolved else None, device=loaded.get("device"),
            n_gpu_layers_requested=n_gpu_layers, n_layers_offloaded=loaded.get("n_layers_offloaded"),
            n_layers_total=loaded.get("n_layers_total"), flash_attn=loaded.get("flash_attn"),
            n_ctx=loaded.get("n_ctx"), n_threads=int(s["n_threads"]), sampler=loaded.get("sampler"),
            gpu_uuid=self.gpu_uuid if loaded.get("device") in ("gpu", "mixed") else None,
            t_start_unix=t_start, t_end_unix=time.time(),
            extra={"sweep": True, "rep": block.rep, "settings": dict(s), "depths": list(block.depths),
                   "model_id": block.config.model_id, "model_desc": loaded.get("model_desc")},
        )

    def _failed(self, block: Block, stage: str, t_start: float, error: str, *, rc: int | None = None,
                resolved: ResolvedFile | None = None, n_gpu_layers: int | None = None, loaded: dict | None = None,
                measured: set[str] | None = None, extra: dict | None = None,
                interrupted: bool = False) -> records.ConfigRecord:
        record = self._config_record(block, "failed", stage, t_start, resolved, n_gpu_layers, loaded or {})
        record.error = error
        if rc is not None and rc < 0:
            record.signal = signal_name(-rc)
        elif rc is not None:
            record.exit_code = rc
        record.extra.update(extra or {})
        self.run.log(f"[{block.config.config_id}] rep {block.rep} failed during {stage}: {error}")
        record.last_log_lines = _log_tail(self.run, block.config.config_id, LAST_LOG_LINES)
        self.run.append(records.CONFIGS_FILE, record)
        if not interrupted:
            # Every depth this load would have measured gets a failed record: the table shows why.
            for depth in block.depths:
                key = sweep_key(block.config.config_id, depth, block.rep)
                if measured and key in measured:
                    continue
                append_jsonl(self.run.file(SWEEP_FILE), asdict(SweepRecord(
                    config_id=block.config.config_id, model_id=block.config.model_id,
                    settings=dict(block.config.settings), depth=depth, n_prompt=self.options.n_prompt,
                    n_gen=self.options.n_gen, prefill_tps=None, decode_tps=None, rep=block.rep,
                    t_unix=time.time(), status="failed", error=error, stage=stage, host=self.host,
                    vram_predicted_bytes=(extra or {}).get("vram_predicted_bytes"),
                )))
        return record

    # -- helpers -------------------------------------------------------------------------------

    def _resolve(self, model_id: str) -> ResolvedFile:
        cached = self._files.get(model_id)
        if isinstance(cached, Exception):
            raise cached
        if cached is None:
            try:
                cached = self.resolve(model_id)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - remembered, so every block of the model says the same
                self._files[model_id] = exc
                raise
            self._files[model_id] = cached
        return cached

    def _nvml_free(self) -> int | None:
        from bench.vram import gpu_memory

        return gpu_memory(self.options.gpu_index).free_bytes


def _block_seed(seed: int, config_id: str, rep: int) -> int:
    """A per-block token seed, stable across runs (no hash randomisation)."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32(config_id.encode()) + rep * 7919) & 0x7FFFFFFF


def _child_env() -> dict[str, str]:
    from bench.engine.orchestrator import REPO_ROOT

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _stop(proc: subprocess.Popen) -> int:
    for sig, wait_s in ((signal.SIGTERM, TERMINATE_GRACE_S), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            continue
    return proc.wait()


def _log_tail(run: RunDir, config_id: str, n: int) -> list[str]:
    try:
        lines = run.file(records.LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return []
    tag = f"[{config_id}]"
    return [line for line in lines if tag in line][-n:]





