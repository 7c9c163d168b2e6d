"""The parent side of `bench profile`: one child process per configuration, and nothing lost.

The parent never loads llama.cpp. For each configuration it resolves the model file, writes a
worker spec, starts `python -m bench.engine.worker SPEC` in a new session (so a terminal Ctrl-C
reaches only the parent, which then stops the child in order), follows its progress events, and
writes the configuration's ConfigRecord — completed, or failed with the stage, the exit code or
signal and the last log lines. A crash (segfault, CUDA out of memory, a file llama.cpp refuses)
costs that configuration only; the run goes on with the next.
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
from pathlib import Path
from typing import Any, Callable

from bench.engine.childexit import exit_text, one_line, signal_name
from bench import records
from bench.errors import EngineError
from bench.rundir import RunDir

REPO_ROOT = Path(__file__).resolve().parents[2]
LAST_LOG_LINES = 15
TERMINATE_GRACE_S = 5.0
# Test hook: SIGKILL the first child after it reports this many requests (resume tests).
KILL_AFTER_ENV = "BENCH_KILL_CHILD_AFTER_REQUESTS"

REINSTALL_CUDA = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'


# --------------------------------------------------------------------------- options and device


@dataclass
class ProfileOptions:
    """Every option that shapes a run; stored in run.json and reused by --resume."""

    preset: str = "quick"
    reps: int = 1
    device: str = "auto"  # auto | gpu | cpu
    n_gpu_layers: int | None = None  # None: every layer on GPU runs, 0 on CPU runs
    flash_attn: str = "auto"  # auto | on | off
    n_threads: int | None = None  # None: every physical core
    n_ctx: int | None = None  # None: longest prompt + its max tokens
    seed: int = 42
    temperature: float = 0.0
    constrained: bool = False
    max_tokens: int | None = None  # cap on every request's max tokens
    sample_hz: float = 20.0
    gpu_index: int = 0
    warmup: bool = True
    allow_partial: bool = False  # a configuration too big for free GPU memory: offload what fits (bench.vram)
    sampler: str = "auto"  # auto | gpu | cpu: where sampling runs (auto: GPU-side on GPU runs)
    parallel: int = 1  # requests decoded at once as sequences of one batch (throughput mode)
    ignore_eos: bool = False  # every request generates exactly its max tokens
    twin: bool = False  # random-weight twins of the configurations (timing only, never scored)
    download: bool = True
    score: bool = True
    nli: bool = True
    nli_model: str | None = None
    # Scale-out (bench.engine.scaleout, bench.engine.ray_backend); not locked: a resumed run may
    # use other GPUs or another cluster, and every record names its GPU and host.
    gpus: str | None = None  # NVML indices "0,1" or "all": one worker per GPU
    split: list = field(default_factory=list)  # "ID" or "ID:N": that configuration over N GPUs
    ray: str | None = None  # Ray cluster address; "" = local / RAY_ADDRESS

    # Options a resumed run must keep: changing any would mix incomparable records in one run.
    LOCKED = ("preset", "reps", "device", "n_gpu_layers", "flash_attn", "n_threads", "n_ctx", "seed",
              "temperature", "constrained", "max_tokens", "gpu_index", "warmup", "sampler", "parallel",
              "ignore_eos", "twin")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProfileOptions":
        return records.from_dict(cls, data)


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "gpu" | "cpu"
    n_gpu_layers: int
    note: str | None  # one line to show the user, e.g. why this is a CPU run


def plan_device(device: str, n_gpu_layers: int | None, build_gpu: bool, gpu_visible: bool) -> DevicePlan:
    """Where the layers go, refusing the silent CPU fallback of a CPU-only llama-cpp-python build.

    - `cpu`: on the CPU on purpose (an explicit --n-gpu-layers above 0 contradicts it).
    - `gpu`, or any explicit --n-gpu-layers other than 0: a CPU-only build is refused with the fix.
    - `auto`: the GPU when the build can offload; a GPU that NVML sees but the build cannot use is
      exactly the trap, so it is refused too; no GPU at all means a CPU run, said in one line.
    """
    refuse = EngineError(
        "this llama-cpp-python build has no GPU support and would silently run on the CPU; "
        f"reinstall it with CUDA: {REINSTALL_CUDA} (or pass --cpu to run on the CPU on purpose)"
    )
    if device == "cpu":
        if n_gpu_layers not in (None, 0):
            raise EngineError(f"--cpu contradicts --n-gpu-layers {n_gpu_layers}; drop one of them")
        return DevicePlan("cpu", 0, "running on the CPU (--cpu)")
    if n_gpu_layers == 0:
        if device == "gpu":
            raise EngineError("--gpu contradicts --n-gpu-layers 0; drop one of them")
        return DevicePlan("cpu", 0, "running on the CPU (--n-gpu-layers 0)")
    if device == "gpu" or n_gpu_layers is not None:
        if not build_gpu:
            raise refuse
        return DevicePlan("gpu", -1 if n_gpu_layers is None else n_gpu_layers, None)
    if build_gpu:
        return DevicePlan("gpu", -1, None)
    if gpu_visible:
        raise refuse
    return DevicePlan("cpu", 0, "no NVIDIA GPU found: running on the CPU (recorded as device = cpu)")


def probe_llama_build(timeout_s: float = 120.0) -> dict[str, Any]:
    """Ask a fresh interpreter what the llama-cpp-python build can do (keeps CUDA out of the parent)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.engine.worker", "--probe"],
            capture_output=True, text=True, timeout=timeout_s, env=_child_env(), cwd=os.getcwd(),
        )
    except subprocess.TimeoutExpired:
        raise EngineError(f"probing llama-cpp-python took over {timeout_s:.0f} s; is the install broken?")
    try:
        facts = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EngineError(f"probing llama-cpp-python failed (exit {out.returncode}): {tail[0]}") from None
    if not facts.get("importable"):
        raise EngineError(
            f"llama-cpp-python is not importable ({facts.get('error')}); install it: pip install llama-cpp-python"
        )
    return facts


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child must import this very `bench`, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --------------------------------------------------------------------------- configurations


@dataclass
class ConfigPlan:
    """One configuration to run: a manifest entry and, once resolved, its file."""

    config_id: str
    entry: Any  # bench.manifest.ModelEntry
    twin: bool = False
    model_path: str | None = None
    model_bytes: int | None = None
    sha256: str | None = None
    verified_by: str | None = None


@dataclass
class ConfigOutcome:
    record: records.ConfigRecord
    interrupted: bool = False


class Interrupted(Exception):
    """The user pressed Ctrl-C (or the parent got SIGTERM); everything recorded is kept."""


class Display:
    """What the orchestrator tells the user; progress.RichDisplay draws it, tests may pass this."""

    def run_start(self, n_configs: int) -> None: ...
    def config_start(self, index: int, config_id: str) -> None: ...
    def config_event(self, config_id: str, event: dict) -> None: ...
    def config_end(self, record: records.ConfigRecord) -> None: ...
    def note(self, text: str) -> None: ...
    def run_end(self) -> None: ...


# --------------------------------------------------------------------------- the orchestrator


class Orchestrator:
    def __init__(
        self,
        run: RunDir,
        options: ProfileOptions,
        device: DevicePlan,
        requests: list[dict],
        display: Display,
        resolve: Callable[[ConfigPlan], None],
        host: str | None = None,
        gpu_uuid: str | None = None,
        on_config_resolved: Callable[[ConfigPlan], None] | None = None,
        child_env: dict[str, str] | None = None,
        spec_extra: dict[str, Any] | None = None,
        record_extra: dict[str, Any] | None = None,
        peak_gbs: float | None = None,
        peak_source: str | None = None,
    ):
        self.run = run
        self.options = options
        self.device = device
        self.requests = requests
        self.display = display
        self.resolve = resolve
        self.host = host
        self.gpu_uuid = gpu_uuid
        self.on_config_resolved = on_config_resolved
        self._kill_after = _int_env(KILL_AFTER_ENV)
        self._log = _ParentLog(run)
        # Scale-out: what pins a child to its GPU(s) (env, spec keys) and what its ConfigRecord
        # says about them; the running child, so another thread can interrupt() it.
        self.child_env = child_env or {}
        self.spec_extra = spec_extra or {}
        self.record_extra = record_extra or {}
        # The GPU's peak memory bandwidth, for the roofline figures (bench.roofline).
        self.peak_gbs = peak_gbs
        self.peak_source = peak_source
        self._proc: subprocess.Popen | None = None
        self._interrupt_requested = False

    # -- plan ----------------------------------------------------------------------------------

    def expected_keys(self, config_id: str) -> list[str]:
        keys = []
        for rep in range(self.options.reps):
            for request in self.requests:
                keys.append(records.request_key(config_id, rep, request["request_id"], "plain"))
                if self.options.constrained and request["format"] == "json":
                    keys.append(records.request_key(config_id, rep, request["request_id"], "constrained"))
        return keys

    # -- run -----------------------------------------------------------------------------------

    def run_all(self, plans: list[ConfigPlan]) -> list[ConfigOutcome]:
        outcomes: list[ConfigOutcome] = []
        self.display.run_start(len(plans))
        for index, plan in enumerate(plans, start=1):
            self.display.config_start(index, plan.config_id)
            outcome = self.run_config(plan)
            outcomes.append(outcome)
            self.display.config_end(outcome.record)
            if outcome.interrupted:
                raise Interrupted(plan.config_id)
        self.display.run_end()
        return outcomes

    def run_config(self, plan: ConfigPlan) -> ConfigOutcome:
        t_start = time.time()
        recorded = self.run.recorded_keys()
        remaining = [k for k in self.expected_keys(plan.config_id) if k not in recorded]
        if not remaining:
            latest = [c for c in self.run.configs() if c.config_id == plan.config_id]
            if latest and latest[-1].status == "ok":
                return ConfigOutcome(latest[-1])  # finished in an earlier session: nothing to add
            record = records.ConfigRecord(
                config_id=plan.config_id, status="ok", stage="done", n_requests=0, twin=plan.twin,
                t_start_unix=t_start, t_end_unix=time.time(),
                extra={"note": "every request was already recorded (resume)"},
            )
            self._write(record)
            return ConfigOutcome(record)
        try:
            self.resolve(plan)
        except KeyboardInterrupt:
            record = self._failed(plan, "fetch", t_start, error="interrupted (Ctrl-C) while fetching")
            return ConfigOutcome(record, interrupted=True)
        except Exception as exc:  # noqa: BLE001 - FetchError, ChecksumError, or anything unforeseen
            record = self._failed(plan, "fetch", t_start, error=one_line(exc))
            return ConfigOutcome(record)
        if self.on_config_resolved is not None:
            self.on_config_resolved(plan)
        return self._spawn(plan, recorded, t_start)

    def _spawn(self, plan: ConfigPlan, recorded: set[str], t_start: float) -> ConfigOutcome:
        o = self.options
        spec = {
            "run_dir": str(self.run.path.resolve()),
            "config_id": plan.config_id,
            "model_path": plan.model_path,
            "model_bytes": plan.model_bytes,
            "sha256": plan.sha256,
            "twin": plan.twin,
            "n_gpu_layers": self.device.n_gpu_layers,
            "flash_attn": o.flash_attn,
            "n_threads": o.n_threads,
            "n_ctx": o.n_ctx,
            "temperature": o.temperature,
            "seed": o.seed,
            "max_tokens_cap": o.max_tokens,
            "reps": o.reps,
            "constrained": o.constrained,
            "requests": self.requests,
            "skip_keys": sorted(k for k in recorded if k.startswith(plan.config_id + "|")),
            "sample_hz": o.sample_hz,
            "gpu_index": o.gpu_index,
            "host": self.host,
            "gpu_uuid": self.gpu_uuid if self.device.device == "gpu" else None,
            "warmup": o.warmup,
            # An orphaned child would go on recording while a `--resume` records the same requests.
            "exit_with_parent": True,
            "allow_partial": o.allow_partial,
            "sampler": o.sampler,
            "parallel": o.parallel,
            "ignore_eos": o.ignore_eos or plan.twin,
            "peak_gbs": self.peak_gbs if self.device.device == "gpu" else None,
        }
        spec.update(self.spec_extra)
        if self._interrupt_requested:
            return ConfigOutcome(self._failed(plan, "child", t_start, error="interrupted (Ctrl-C)"), interrupted=True)
        read_fd, write_fd = os.pipe()
        spec["events_fd"] = write_fd
        # One spec file per spawning thread: a GPU pool runs several children at once.
        spec_path = self.run.path / f".worker-spec-{os.getpid()}-{threading.get_ident()}.json"
        spec_path.write_text(json.dumps(spec))
        state = _ChildState()
        interrupted = False
        env = {**_child_env(), **self.child_env}
        visible = self._pin_gpu(env)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.engine.worker", str(spec_path)],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            spec_path.unlink(missing_ok=True)
            return ConfigOutcome(self._failed(plan, "child", t_start, error=f"could not start the worker: {exc}"))
        os.close(write_fd)
        self._proc = proc
        if self._interrupt_requested:
            self._stop(proc)
        self._log(f"[{plan.config_id}] worker pid {proc.pid} started"
                  + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else ""))
        output = threading.Thread(target=self._pump_output, args=(proc, plan.config_id), daemon=True)
        output.start()
        try:
            with os.fdopen(read_fd, "rb") as events:
                for raw in events:
                    try:
                        event = json.loads(raw)
                    except json.JSONDecodeError:
                        continue
                    state.update(event)
                    self.display.config_event(plan.config_id, event)
                    if (event.get("event") == "request" and self._kill_after is not None
                            and state.n_requests >= self._kill_after):
                        self._kill_after = None
                        self._log(f"[{plan.config_id}] test hook: SIGKILL worker pid {proc.pid}")
                        os.kill(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            rc = self._stop(proc)
        finally:
            output.join(timeout=5)
            spec_path.unlink(missing_ok=True)
            self._proc = None
        # A child that finished before the interrupt reached it keeps its completed record.
        interrupted = interrupted or (self._interrupt_requested and not (rc == 0 and state.done is not None))
        if rc == 0 and state.done is not None and not interrupted:
            record = self._completed(plan, state, t_start)
        else:
            record = self._failed(plan, state.stage or "child", t_start, rc=rc, state=state,
                                  error="interrupted (Ctrl-C)" if interrupted else None)
        return ConfigOutcome(record, interrupted=interrupted)

    def _pin_gpu(self, env: dict[str, str]) -> str | None:
        """Show a one-GPU child only the GPU that telemetry watches; returns what it sees.

        llama.cpp splits a model over every visible GPU by default while NVML samples one, so on
        a multi-GPU host the energy and VRAM figures would miss the other cards. NVML counts GPUs
        in PCI order and CUDA may not, so the card is named by UUID. A CUDA_VISIBLE_DEVICES set by
        the user or by a scale-out caller (child_env) is left alone.
        """
        if "CUDA_VISIBLE_DEVICES" in env:
            return env["CUDA_VISIBLE_DEVICES"]
        if self.device.device != "gpu" or not self.gpu_uuid:
            return None
        env["CUDA_VISIBLE_DEVICES"] = self.gpu_uuid
        return self.gpu_uuid

    def _stop(self, proc: subprocess.Popen) -> int:
        """Stop the child: SIGTERM, then SIGKILL after a grace period. Its appends are atomic."""
        for sig, wait_s in ((signal.SIGTERM, TERMINATE_GRACE_S), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                return proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            except KeyboardInterrupt:  # a second Ctrl-C: go straight to SIGKILL
                continue
        return proc.wait()

    def interrupt(self) -> None:
        """Stop the running child from another thread (a GPU pool's main thread on Ctrl-C); its
        configuration is recorded as interrupted, and no later one starts on this orchestrator."""
        self._interrupt_requested = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._stop(proc)

    def _pump_output(self, proc: subprocess.Popen, config_id: str) -> None:
        """The child's own stdout/stderr (ggml aborts, CUDA errors) into log.txt, tagged."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self._log(f"[{config_id}] stderr: {line}")

    # -- records -------------------------------------------------------------------------------

    def _completed(self, plan: ConfigPlan, state: "_ChildState", t_start: float) -> records.ConfigRecord:
        done = state.done or {}
        record = self._base_record(plan, "ok", "done", state, t_start)
        record.peak_vram_bytes = done.get("peak_vram_bytes")
        record.peak_rss_bytes = done.get("peak_rss_bytes")
        record.extra["peak_vram_source"] = done.get("peak_vram_source")
        record.extra["roofline"] = self._roofline(plan, state)
        if (state.loaded or {}).get("parallel", 1) > 1:
            record.extra["parallel"] = state.loaded["parallel"]
        self._write(record)
        self._log(f"[{plan.config_id}] completed: {state.n_requests} requests")
        return record

    def _roofline(self, plan: ConfigPlan, state: "_ChildState") -> dict | None:
        """Model bytes x median decode TPS of this configuration's requests, against the GPU's peak."""
        from bench.engine.stats import percentile
        from bench.roofline import roofline

        tps = [r.decode_tps for r in self.run.requests()
               if r.config_id == plan.config_id and r.decode_tps is not None]
        model_bytes = (state.loaded or {}).get("model_size_bytes") or plan.model_bytes
        on_gpu = (state.loaded or {}).get("device") in ("gpu", "mixed")
        fig = roofline(model_bytes, percentile(tps, 50), self.peak_gbs if on_gpu else None,
                       self.peak_source if on_gpu else None)
        if fig is not None:
            fig["n"] = len(tps)
        return fig

    def _failed(self, plan: ConfigPlan, stage: str, t_start: float, rc: int | None = None,
                state: "_ChildState | None" = None, error: str | None = None) -> records.ConfigRecord:
        state = state or _ChildState()
        record = self._base_record(plan, "failed", stage, state, t_start)
        if rc is not None and rc < 0:
            record.signal = signal_name(-rc)
        elif rc is not None:
            record.exit_code = rc
        record.error = error or state.error or exit_text(rc, "worker")
        # Log first, so the tail attached to the record ends with why it failed.
        self._log(f"[{plan.config_id}] failed during {stage}: {record.error}")
        record.last_log_lines = self._log.tail(plan.config_id, LAST_LOG_LINES)
        self._write(record)
        return record

    def _base_record(self, plan: ConfigPlan, status: str, stage: str, state: "_ChildState",
                     t_start: float) -> records.ConfigRecord:
        loaded = state.loaded or {}
        return records.ConfigRecord(
            config_id=plan.config_id,
            status=status,
            stage=stage,
            n_requests=state.n_requests,
            model_path=plan.model_path,
            model_bytes=plan.model_bytes,
            sha256=plan.sha256,
            twin=plan.twin,
            device=loaded.get("device"),
            n_gpu_layers_requested=self.device.n_gpu_layers,
            n_layers_offloaded=loaded.get("n_layers_offloaded"),
            n_layers_total=loaded.get("n_layers_total"),
            flash_attn=loaded.get("flash_attn"),
            n_ctx=loaded.get("n_ctx"),
            n_threads=self.options.n_threads,
            sampler=loaded.get("sampler"),
            chat_template=loaded.get("chat_template"),
            load_time_s=loaded.get("load_time_s"),
            gpu_uuid=self.gpu_uuid if loaded.get("device") in ("gpu", "mixed") else None,
            t_start_unix=t_start,
            t_end_unix=time.time(),
            extra={**{k: loaded[k] for k in ("model_desc", "model_params", "nvml", "nvml_reason") if k in loaded},
                   **(state.vram or {})},
        )

    def _write(self, record: records.ConfigRecord) -> None:
        record.extra.update(self.record_extra)
        self.run.append(records.CONFIGS_FILE, record)


class _ParentLog:
    def __init__(self, run: RunDir):
        self.path = run.file(records.LOG_FILE)

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = f"{stamp} {message}\n".encode("utf-8", errors="replace")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def tail(self, config_id: str, n: int) -> list[str]:
        tag = f"[{config_id}]"
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        mine = [line for line in lines if tag in line]
        return mine[-n:]


@dataclass
class _ChildState:
    stage: str | None = None
    loaded: dict | None = None
    done: dict | None = None
    error: str | None = None
    vram: dict | None = None  # bench.vram's prediction against measurement, for ConfigRecord.extra
    n_requests: int = 0
    total: int | None = None
    extra: dict = field(default_factory=dict)

    def update(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            self.stage = event.get("stage")
        elif kind == "loaded":
            self.loaded = event
        elif kind == "plan":
            self.total = event.get("total")
        elif kind == "request":
            self.n_requests += 1
        elif kind == "done":
            self.done = event
        elif kind == "vram":
            self.vram = event.get("extra") or {}
        elif kind == "error":
            self.error = event.get("error")
            self.stage = event.get("stage") or self.stage








def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None
