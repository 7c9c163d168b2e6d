"""`bench profile --ray [ADDRESS]`: every configuration a Ray task; records stream to this run directory.

No filesystem is shared with the cluster. Each configuration runs as a Ray streaming-generator
task (num_gpus=1; num_gpus=0 with --cpu) that, on its worker host:

- probes the host (hwprobe) and the llama-cpp-python build there, and plans the device there;
- resolves the model file there (`resolve_model(download=…)`: the hub from the worker host, or
  the path as given for `source = "local"` / "package" entries), checked against that host's lock
  (with --twin: the twin, written on that host);
- runs the configuration exactly as `bench profile` does locally (bench.engine.orchestrator: one
  child process, pinned to the task's GPU by UUID) into a scratch run directory, and yields every
  request record, telemetry batch, log line and progress event as it lands there, then the
  ConfigRecord.

The driver drains the generators (one thread each), appends what arrives to its run directory,
drops any request key it already holds, and puts each worker host's probe into
run.json["hosts"][hostname] (every record also names its host). A task whose worker is lost
(process or node died) is submitted once more with the keys the driver already has skipped; the
loss is logged and counted in ConfigRecord.extra["retries"] / ["lost_attempts"]. A task that fails
inside (a model that will not load) is that configuration's failure, not retried.

`--ray` alone starts a private Ray on this machine (handy to try it; RAY_ADDRESS, if set, is used
instead); `--ray auto` joins the cluster `ray start` began on this machine; `--ray ADDRESS` joins
that cluster. The driver ships its own `bench` and `hwprobe` packages to the workers (Ray
py_modules), so the code on both ends is the same; llama-cpp-python, psutil, nvidia-ml-py and
huggingface_hub must be installed on the workers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from bench.engine.childexit import one_line
from bench import records
from bench.errors import BenchError
from bench.rundir import RunDir

RAY_INSTALL = "pip install 'bench-gguf[ray]'  (or: pip install ray)"
# Test only: "CONFIG_ID:N" makes the first attempt of that configuration's Ray worker kill its
# child and os._exit() after it has sent N request records (a worker lost mid-configuration).
LOSE_WORKER_ENV = "BENCH_RAY_TEST_LOSE_WORKER"
MAX_ATTEMPTS = 2  # the first attempt and one retry after a lost worker
POLL_S = 0.5  # how often a task looks for new lines even without an event
FORCE_CANCEL_AFTER_S = 15.0


# =========================================================================== the worker side


class _QueueDisplay:
    """The Display the task's Orchestrator talks to: everything goes onto one local queue."""

    def __init__(self, q: "queue.Queue"):
        self.q = q

    def config_event(self, config_id: str, event: dict) -> None:
        self.q.put(("event", event))

    def note(self, text: str) -> None:
        self.q.put(("note", text))

    def run_start(self, n: int) -> None: ...
    def config_start(self, index: int, config_id: str) -> None: ...
    def config_end(self, record) -> None: ...
    def run_end(self) -> None: ...


class _Tail:
    """New complete lines of a file since the last read (a line still being written waits)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def lines(self) -> list[bytes]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [line for line in data[:end].split(b"\n") if line.strip()]


def _nvml_gpu(token: str | None, gpus: list[dict]) -> dict | None:
    """The probed GPU a Ray GPU id names: a UUID as is, a number as an NVML index (PCI order)."""
    if not token:
        return None
    for gpu in gpus:
        if token.startswith(("GPU-", "MIG-")) and gpu.get("uuid") == token:
            return gpu
        if token.isdigit() and gpu.get("index") == int(token):
            return gpu
    return None


def config_task(payload: dict) -> Iterator[dict]:
    """One configuration on a Ray worker; yields messages ({"kind": …}) for the driver."""
    import json

    from bench.engine.orchestrator import ConfigPlan, Orchestrator, ProfileOptions, plan_device, probe_llama_build
    from hwprobe.probe import collect

    host = socket.gethostname()
    config_id = payload["config_id"]
    options = ProfileOptions.from_dict(payload["options"])
    hardware = collect(include_llama=False)
    gpu = None
    token = None
    # Ray hands out its GPU ids as CUDA_VISIBLE_DEVICES values; with CUDA_DEVICE_ORDER=PCI_BUS_ID
    # (set for the child) a number is the NVML index. The child is then pinned by UUID, the one
    # name CUDA and NVML share, so telemetry and records describe the card that did the work.
    if options.device != "cpu":
        import ray

        ids = ray.get_runtime_context().get_accelerator_ids().get("GPU") or []
        token = ids[0] if ids else (os.environ.get("CUDA_VISIBLE_DEVICES") or "").split(",")[0]
        gpu = _nvml_gpu(str(token), hardware.get("gpus", []))
    if options.n_threads is None:
        options.n_threads = (hardware.get("cpu") or {}).get("physical_cores") or os.cpu_count() or 1
    yield {"kind": "host", "host": host, "hardware": hardware, "pid": os.getpid(),
           "gpu_uuid": gpu and gpu.get("uuid"), "gpu_index": gpu and gpu.get("index"),
           "gpu_name": gpu and gpu.get("name")}

    scratch = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    run = RunDir(scratch)
    q: queue.Queue = queue.Queue()
    orchestrator = None
    worker_thread = None
    try:
        llama = probe_llama_build()
        yield {"kind": "llama", "host": host, "llama_cpp": llama}
        device = plan_device(options.device, options.n_gpu_layers, bool(llama.get("supports_gpu_offload")),
                             bool(hardware.get("gpus")))
        pinned: dict[str, Any] = {"spec_extra": {"skip_keys": sorted(payload["skip_keys"]), "exit_with_parent": True},
                                  "record_extra": {"host": host}}
        if gpu is None and device.device == "gpu":
            yield {"kind": "note", "text": f"{host}: Ray's GPU id {token!r} matches no NVML device; the child "
                                           "keeps Ray's CUDA_VISIBLE_DEVICES and its records name no GPU UUID"}
        if gpu is not None and device.device == "gpu":
            from bench.roofline import peak_bandwidth

            pinned["child_env"] = {"CUDA_VISIBLE_DEVICES": gpu["uuid"], "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
            pinned["spec_extra"]["gpu_index"] = gpu["index"]
            pinned["record_extra"]["gpu_index"] = gpu["index"]
            pinned["peak_gbs"], pinned["peak_source"] = peak_bandwidth(gpu)

        def resolve(plan: ConfigPlan) -> None:
            if plan.twin:  # --twin: the worker host writes (or reuses) the random-weight twin itself
                from bench.twin import ensure_twin

                made = ensure_twin(plan.entry, manifest=payload["manifest"],
                                   progress=lambda msg: q.put(("note", f"{host}: {msg}")))
                plan.model_path, plan.model_bytes, plan.sha256, plan.verified_by = (
                    str(made.path), made.size_bytes, None, "twin")
                return
            from bench.fetch import resolve_model

            resolved = resolve_model(plan.entry, payload["manifest"], download=options.download,
                                     progress=lambda msg: q.put(("note", f"{host}: {msg}")))
            plan.model_path = str(resolved.path)
            plan.model_bytes = resolved.size_bytes
            plan.sha256 = resolved.sha256
            plan.verified_by = resolved.verified_by

        orchestrator = Orchestrator(run, options, device, payload["requests"], _QueueDisplay(q), resolve,
                                    host=host, gpu_uuid=gpu and gpu.get("uuid"), **pinned)
        plan = ConfigPlan(config_id=config_id, entry=payload["entry"], twin=payload.get("twin", False))

        def work() -> None:
            try:
                q.put(("done", orchestrator.run_config(plan)))
            except BaseException as exc:  # noqa: BLE001 - handed to the generator, which re-raises
                q.put(("crash", exc))

        worker_thread = threading.Thread(target=work, name=f"bench-config-{config_id}", daemon=True)
        worker_thread.start()
        tails = {name: _Tail(run.file(name)) for name in
                 (records.REQUESTS_FILE, records.TELEMETRY_FILE, records.LOG_FILE)}
        sent = 0
        lose_after = payload.get("lose_after")
        finished = None
        while finished is None:
            try:
                kind, value = q.get(timeout=POLL_S)
            except queue.Empty:
                kind, value = "tick", None
            for line in tails[records.REQUESTS_FILE].lines():
                yield {"kind": "request", "record": json.loads(line)}
                sent += 1
                if lose_after is not None and sent >= lose_after:
                    _lose_worker(orchestrator, scratch)
            rows = [json.loads(line) for line in tails[records.TELEMETRY_FILE].lines()]
            if rows:
                yield {"kind": "telemetry", "rows": rows, "host": host}
            lines = [line.decode("utf-8", "replace") for line in tails[records.LOG_FILE].lines()]
            if lines:
                yield {"kind": "log", "lines": lines, "host": host}
            if kind == "event":
                yield {"kind": "event", "event": value}
            elif kind == "note":
                yield {"kind": "note", "text": value}
            elif kind == "crash":
                raise value
            elif kind == "done":
                finished = value
        yield {"kind": "config", "record": records.to_dict(finished.record), "interrupted": finished.interrupted,
               "resolved": {"path": finished.record.model_path, "size_bytes": finished.record.model_bytes,
                            "sha256": finished.record.sha256, "host": host}}
    finally:
        # Cancelled (KeyboardInterrupt in this thread) or failed: stop the child before leaving.
        if worker_thread is not None and worker_thread.is_alive() and orchestrator is not None:
            orchestrator.interrupt()
            worker_thread.join(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


def _lose_worker(orchestrator, scratch: Path) -> None:
    """Test hook: die the way a lost host does (child included), without leaving files behind."""
    proc = orchestrator._proc
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(scratch, ignore_errors=True)
    os._exit(1)


# =========================================================================== the driver side


def import_ray():
    try:
        import ray
    except ImportError:
        raise BenchError(f"--ray needs the ray package on this machine: {RAY_INSTALL}") from None
    return ray


def connect(address: str, n_local_cpus: int | None = None) -> dict:
    """Join (or start) the Ray cluster; returns what run.json records about it."""
    ray = import_ray()
    import bench
    import hwprobe

    runtime_env = {"py_modules": [str(Path(bench.__file__).parent), str(Path(hwprobe.__file__).parent)]}
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING, runtime_env=runtime_env)
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    if not ray.is_initialized():
        if target == "local":
            kwargs.update(num_cpus=n_local_cpus or os.cpu_count() or 1, include_dashboard=False)
        try:
            ray.init(address=target, **kwargs)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, … one line each
            raise BenchError(f"--ray {target}: could not reach the Ray cluster: {one_line(exc)}") from None
    resources = ray.cluster_resources()
    nodes = [n.get("NodeManagerHostname") for n in ray.nodes() if n.get("Alive")]
    return {"address": target, "resources": {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")},
            "nodes": nodes}


def check_resources(cluster: dict, num_gpus: int, num_cpus: float) -> None:
    have = cluster.get("resources", {})
    if num_gpus and have.get("GPU", 0) < num_gpus:
        raise BenchError(
            f"--ray: the Ray cluster has no GPU (resources: {_resources_text(have)}); "
            "pass --cpu to run on its CPUs, or join a cluster with GPUs"
        )
    if have.get("CPU", 0) < num_cpus:
        raise BenchError(f"--ray: each task asks for {num_cpus:g} CPUs (--threads), the cluster has "
                         f"{have.get('CPU', 0):g}; lower --threads")


def _resources_text(have: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(have.items()) if k in ("CPU", "GPU")) or "none"


@dataclasses.dataclass
class RayPlan:
    """--ray checked before any work starts: the cluster is reachable and has what the tasks ask."""

    cluster: dict
    llama: dict  # for run.json: the builds are probed on each worker host (run.json hosts)
    device: Any  # bench.engine.orchestrator.DevicePlan as the driver asks it of the workers

    def runner(self, run: RunDir, options, requests: list[dict], manifest, display, meta: dict) -> "RayRunner":
        return RayRunner(run, options, requests, manifest, display, meta, self.cluster)


def plan_ray(options) -> RayPlan:
    from bench.engine.orchestrator import DevicePlan

    if options.device == "cpu" and options.n_gpu_layers not in (None, 0):
        raise BenchError(f"--cpu contradicts --n-gpu-layers {options.n_gpu_layers}; drop one of them")
    on_cpu = options.device == "cpu" or options.n_gpu_layers == 0
    if on_cpu:
        options.device = "cpu"
    cluster = connect(options.ray or "")
    check_resources(cluster, 0 if on_cpu else 1, float(options.n_threads or 1) if on_cpu else 1.0)
    device = (DevicePlan("cpu", 0, "Ray tasks run on the workers' CPUs (num_gpus=0)") if on_cpu else
              DevicePlan("gpu", -1 if options.n_gpu_layers is None else options.n_gpu_layers, None))
    llama = {"probed_on": "each Ray worker host: see run.json hosts[<hostname>].llama_cpp"}
    return RayPlan(cluster=cluster, llama=llama, device=device)


class RayRunner:
    """Runs ConfigPlans as Ray tasks and keeps the run directory as a local run would."""

    def __init__(self, run: RunDir, options, requests: list[dict], manifest, display, meta: dict,
                 cluster: dict, max_in_flight: int = 256):
        from bench.engine.orchestrator import DevicePlan, Orchestrator

        self.run = run
        self.options = options
        self.requests = requests
        self.manifest = manifest
        self.display = display
        self.meta = meta
        self.cluster = cluster
        self.max_in_flight = max_in_flight
        self.num_gpus = 0 if options.device == "cpu" else 1
        self.num_cpus = float(options.n_threads or 1) if self.num_gpus == 0 else 1.0
        self._keys_of = Orchestrator(run, options, DevicePlan("cpu", 0, None), requests, display,
                                     resolve=lambda plan: None).expected_keys
        self._recorded = run.recorded_keys()
        self._lock = threading.Lock()  # recorded keys, meta
        self._tasks: dict[str, Any] = {}  # config id -> its streaming generator in flight
        self._stopping = False
        self._lose = _lose_spec(os.environ.get(LOSE_WORKER_ENV, ""))
        meta.setdefault("hosts", {})
        meta["ray"] = cluster

    # -- the pool ------------------------------------------------------------------------------

    def run_all(self, plans: list) -> list:
        from bench.engine.orchestrator import Interrupted
        from bench.engine.scaleout import Job, PoolInterrupted, SlotPool

        check_resources(self.cluster, self.num_gpus, self.num_cpus)
        jobs = [Job(order=i, name=p.config_id, payload=p) for i, p in enumerate(plans)]
        # Ray queues the tasks on the cluster; one driver thread per task in flight drains it.
        n = max(1, min(len(plans), self.max_in_flight))
        pool = SlotPool(slots=list(range(n)), run_job=lambda job, slots: self._drive(job.payload),
                        on_error=lambda job, slots, exc: self._failed(job.payload, "child", one_line(exc), []),
                        interrupt=self._cancel_all, is_interrupt=lambda outcome: outcome.interrupted,
                        on_end=lambda job, slots, outcome: self.display.config_end(outcome.record))
        self.display.run_start(len(plans))
        try:
            outcomes = pool.run(jobs)
        except PoolInterrupted:
            raise Interrupted("Ray") from None
        finally:
            self._settle_hardware()
        self.display.run_end()
        return outcomes

    def _cancel_all(self) -> None:
        ray = import_ray()
        with self._lock:
            self._stopping = True
            tasks = list(self._tasks.values())
        for task in tasks:
            try:
                ray.cancel(task)  # KeyboardInterrupt in the task: it stops its child and ends
            except Exception:  # noqa: BLE001 - already finished
                pass

        def force() -> None:
            with self._lock:
                left = list(self._tasks.values())
            for task in left:
                try:
                    ray.cancel(task, force=True)
                except Exception:  # noqa: BLE001
                    pass

        timer = threading.Timer(FORCE_CANCEL_AFTER_S, force)
        timer.daemon = True
        timer.start()

    # -- one configuration ---------------------------------------------------------------------

    def _drive(self, plan):
        from bench.engine.orchestrator import ConfigOutcome

        ray = import_ray()
        config_id = plan.config_id
        lost: list[dict] = []
        t_start = time.time()
        for attempt in range(MAX_ATTEMPTS):
            with self._lock:
                if self._stopping:
                    return ConfigOutcome(self._failed(plan, "child", "interrupted (Ctrl-C)", lost, t_start),
                                         interrupted=True)
                have = {k for k in self._recorded if k.startswith(config_id + "|")}
            if not [k for k in self._keys_of(config_id) if k not in have]:
                record = records.ConfigRecord(config_id=config_id, status="ok", stage="done", n_requests=0,
                                              twin=plan.twin, t_start_unix=t_start, t_end_unix=time.time(),
                                              extra={"note": "every request was already recorded", "retries": attempt,
                                                     "lost_attempts": lost})
                self._write_config(record)
                return ConfigOutcome(record)
            payload = {
                "config_id": config_id, "entry": plan.entry, "manifest": self.manifest, "twin": plan.twin,
                "options": self.options.to_dict(), "requests": self.requests, "skip_keys": sorted(have),
                "attempt": attempt, "lose_after": self._lose.get(config_id) if attempt == 0 else None,
            }
            task = _remote_task(ray).options(
                num_returns="streaming", max_retries=0, num_gpus=self.num_gpus, num_cpus=self.num_cpus,
                name=f"bench:{config_id}",
            ).remote(payload)
            with self._lock:
                self._tasks[config_id] = task
            state = _AttemptState(attempt=attempt)
            row = None
            try:
                for ref in task:
                    message = ray.get(ref)
                    row = self._handle(plan, message, state, row)
                if state.config is None:
                    raise _Lost("the task ended without its configuration record")
            except ray.exceptions.TaskCancelledError:
                return ConfigOutcome(self._failed(plan, "child", "interrupted (Ctrl-C)", lost, t_start, state),
                                     interrupted=True)
            except ray.exceptions.RayTaskError as exc:  # an error inside the task: this config's failure
                return ConfigOutcome(self._failed(plan, "child", _task_error_text(exc), lost, t_start, state))
            except (ray.exceptions.RayError, _Lost) as exc:  # the worker (process or node) was lost
                what = f"{type(exc).__name__}: {one_line(exc)}"
                lost.append({"attempt": attempt, "host": state.host, "n_requests": state.n_requests, "error": what})
                again = "retrying once" if attempt + 1 < MAX_ATTEMPTS else "not retried again"
                self.run.log(f"[{config_id}] Ray worker lost on {state.host or 'an unknown host'} after "
                             f"{state.n_requests} requests ({what}); {again}")
                self.display.note(f"{config_id}: Ray worker lost ({type(exc).__name__}); {again}")
                continue
            finally:
                with self._lock:
                    self._tasks.pop(config_id, None)
                if row is not None:
                    self.display.remove_row(row.label)
            record = records.from_dict(records.ConfigRecord, state.config["record"])
            record.extra.update({"retries": attempt, "lost_attempts": lost, "host": state.host})
            if lost:
                record.t_start_unix = t_start
            self._write_config(record)
            self._resolved_to_meta(config_id, state.config.get("resolved"))
            return ConfigOutcome(record, interrupted=bool(state.config.get("interrupted")))
        error = f"the Ray worker was lost {MAX_ATTEMPTS} times; last: {lost[-1]['error']}"
        return ConfigOutcome(self._failed(plan, "child", error, lost, t_start))

    def _handle(self, plan, message: dict, state: "_AttemptState", row):
        kind = message.get("kind")
        config_id = plan.config_id
        if kind == "host":
            state.host = message["host"]
            with self._lock:
                self.meta["hosts"].setdefault(state.host, {})["hardware"] = message["hardware"]
                self.run.write_meta(self.meta)
            gpu = f" · GPU {message['gpu_index']}" if message.get("gpu_index") is not None else ""
            row = self.display.row(f"{state.host}{gpu} · {config_id}")
            row.config_start(0, config_id)
            if state.attempt:
                row.status("retry after a lost worker")
        elif kind == "llama":
            with self._lock:
                self.meta["hosts"].setdefault(message["host"], {})["llama_cpp"] = message["llama_cpp"]
                self.run.write_meta(self.meta)
        elif kind == "request":
            data = message["record"]
            key = records.request_key(data["config_id"], data["rep"], data["request_id"], data["mode"])
            with self._lock:
                duplicate = key in self._recorded
                if not duplicate:
                    self._recorded.add(key)
            if duplicate:  # the driver's keys were skipped; this would only come from a bug
                self.run.log(f"[{config_id}] dropped a second record of {key}")
            else:
                self.run.append(records.REQUESTS_FILE, data)
                state.n_requests += 1
        elif kind == "telemetry":
            from bench.engine.worker import append_jsonl_many

            append_jsonl_many(self.run.file(records.TELEMETRY_FILE),
                              [{**r, "host": message["host"]} for r in message["rows"]])
        elif kind == "log":
            _append_lines(self.run.file(records.LOG_FILE), [f"{line} @{message['host']}" for line in message["lines"]])
        elif kind == "event" and row is not None:
            row.config_event(config_id, message["event"])
        elif kind == "note":
            self.display.note(message["text"])
        elif kind == "config":
            state.config = message
        return row

    # -- records -------------------------------------------------------------------------------

    def _failed(self, plan, stage: str, error: str, lost: list, t_start: float | None = None,
                state: "_AttemptState | None" = None) -> records.ConfigRecord:
        record = records.ConfigRecord(
            config_id=plan.config_id, status="failed", stage=stage,
            n_requests=state.n_requests if state else 0, twin=plan.twin, error=error,
            t_start_unix=t_start, t_end_unix=time.time(),
            extra={"retries": len(lost), "lost_attempts": lost, "host": state.host if state else None},
        )
        self.run.log(f"[{plan.config_id}] failed on Ray: {error}")
        self._write_config(record)
        return record

    def _write_config(self, record: records.ConfigRecord) -> None:
        self.run.append(records.CONFIGS_FILE, record)

    def _resolved_to_meta(self, config_id: str, resolved: dict | None) -> None:
        if not resolved:
            return
        with self._lock:
            for config in self.meta.get("configs", []):
                if config.get("config_id") == config_id:
                    config["resolved"] = resolved
            self.run.write_meta(self.meta)

    def _settle_hardware(self) -> None:
        """With one worker host, run.json's `hardware` is that host's, as a local run's would be."""
        with self._lock:
            hosts = self.meta.get("hosts", {})
            if len(hosts) == 1:
                (only,) = hosts.values()
                if only.get("hardware"):
                    self.meta.setdefault("driver_hardware", self.meta.get("hardware"))
                    self.meta["hardware"] = only["hardware"]
            self.run.write_meta(self.meta)


@dataclasses.dataclass
class _AttemptState:
    attempt: int
    host: str | None = None
    n_requests: int = 0
    config: dict | None = None


class _Lost(Exception):
    """The task's stream ended without a result (treated like a lost worker)."""


_REMOTE: dict[str, Any] = {}


def _remote_task(ray):
    """config_task as a Ray remote function, made once per process."""
    if "task" not in _REMOTE:
        _REMOTE["task"] = ray.remote(config_task)
    return _REMOTE["task"]


def _lose_spec(text: str) -> dict[str, int]:
    config_id, sep, count = text.strip().rpartition(":")
    return {config_id: int(count)} if sep and config_id and count.isdigit() else {}


def _append_lines(path: Path, lines: list[str]) -> None:
    if not lines:
        return
    data = "".join(line.rstrip("\n") + "\n" for line in lines).encode("utf-8", errors="replace")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _task_error_text(exc: BaseException) -> str:
    """The task's own exception, one line (RayTaskError wraps it with a traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        text = " ".join(str(cause).split()) or type(cause).__name__
        return text if "BenchError" in {c.__name__ for c in type(cause).__mro__} else f"{type(cause).__name__}: {text}"
    return one_line(exc).splitlines()[0] if str(exc) else type(exc).__name__

