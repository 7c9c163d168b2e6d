"""`bench profile --gpus`: one worker per GPU, each configuration to whichever GPU is free.

The run is still one run directory. Each configuration still gets its own child process
(bench.engine.worker), now pinned to its GPU: CUDA_VISIBLE_DEVICES names the GPU by UUID (CUDA's
own device order need not match NVML's, a UUID is the same to both), and the spec carries the
NVML index, because NVML ignores CUDA_VISIBLE_DEVICES and the child samples that device. Children
append to the same JSONL files at once; every line is one O_APPEND write (bench.rundir), which
concurrent appenders on a local filesystem cannot interleave.

A configuration named with `--split ID[:N]` gets N GPUs at once (default: all of --gpus):
CUDA_VISIBLE_DEVICES lists their UUIDs, llama.cpp splits the layers over them (split_mode layer)
in proportion to each GPU's free memory when the configuration starts; its records carry every
UUID in extra["gpu_uuids"]. Split configurations are queued first, so they never wait behind a
queue of single-GPU ones for every GPU to be free at the same moment.

`SlotPool` is the queue itself, free of GPUs and processes so it can be tested with fakes.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

from bench.errors import BenchError

S = TypeVar("S")  # a slot: a GPU, or a fake one in tests
R = TypeVar("R")  # what running a job returns

SPLIT_MODE = "layer"


# --------------------------------------------------------------------------- the queue


@dataclass
class Job:
    order: int  # position in the user's list; results come back in this order
    name: str
    n_slots: int = 1
    payload: Any = None


class PoolInterrupted(Exception):
    """Ctrl-C (or a job that reported an interrupt) stopped the pool; `results` is what finished."""

    def __init__(self, results: list):
        super().__init__("interrupted")
        self.results = results


@dataclass
class SlotPool(Generic[S, R]):
    """Run jobs on a fixed set of slots, each job on the first free slot(s) as soon as enough are free.

    - `run_job(job, slots)` runs in a thread of its own and returns the job's result.
    - `on_error(job, slots, exc)` turns an exception from run_job into a result (a failed record):
      one failing job never stops the others.
    - `interrupt()` is called once, from the calling thread, on Ctrl-C (KeyboardInterrupt) or when
      `is_interrupt(result)` says a job was interrupted; jobs not started yet are not started, the
      running ones are awaited, and PoolInterrupted carries every result there is.
    - `on_start(job, slots)` / `on_end(job, slots, result)` are called from the calling thread.
    Jobs that need more slots go first (then the user's order); a job waits until enough slots are
    free, and nothing behind it overtakes it.
    """

    slots: Sequence[S]
    run_job: Callable[[Job, tuple], R]
    on_error: Callable[[Job, tuple, BaseException], R]
    interrupt: Callable[[], None] = lambda: None
    is_interrupt: Callable[[R], bool] = lambda result: False
    on_start: Callable[[Job, tuple], None] = lambda job, slots: None
    on_end: Callable[[Job, tuple, R], None] = lambda job, slots, result: None
    poll_s: float = 0.2
    _results: dict = field(default_factory=dict, init=False)

    def run(self, jobs: Sequence[Job]) -> list[R]:
        n = len(self.slots)
        for job in jobs:
            if not 1 <= job.n_slots <= n:
                raise BenchError(f"{job.name}: needs {job.n_slots} GPUs, the pool has {n}")
        pending = sorted(jobs, key=lambda j: (-j.n_slots, j.order))
        free = list(range(n))  # slot positions, kept in order so the lowest free slots go first
        running: dict[Future, tuple[Job, tuple[int, ...]]] = {}
        stopping = False
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="bench-slot") as pool:
            while running or (pending and not stopping):
                # Ctrl-C may land anywhere in here: stop starting jobs, interrupt the running ones
                # and keep collecting them (leaving would wait for them anyway, uninterrupted).
                try:
                    while pending and not stopping and len(free) >= pending[0].n_slots:
                        job = pending.pop(0)
                        taken, free = tuple(free[:job.n_slots]), free[job.n_slots:]
                        slots = tuple(self.slots[i] for i in taken)
                        self.on_start(job, slots)
                        running[pool.submit(self.run_job, job, slots)] = (job, taken)
                    done, _ = wait(list(running), timeout=self.poll_s, return_when=FIRST_COMPLETED)
                    for future in done:
                        job, taken = running.pop(future)
                        free = sorted(free + list(taken))
                        slots = tuple(self.slots[i] for i in taken)
                        try:
                            result = future.result()
                        except Exception as exc:  # noqa: BLE001 - one job's failure is its own
                            result = self.on_error(job, slots, exc)
                        self._results[job.order] = result
                        self.on_end(job, slots, result)
                        if self.is_interrupt(result) and not stopping:
                            stopping = True
                            self.interrupt()
                except KeyboardInterrupt:
                    if not stopping:
                        stopping = True
                        self.interrupt()
        results = [self._results[j.order] for j in sorted(jobs, key=lambda j: j.order) if j.order in self._results]
        if stopping:
            raise PoolInterrupted(results)
        return results


# --------------------------------------------------------------------------- choosing GPUs


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML index (nvidia-smi's numbering)
    uuid: str
    name: str | None = None
    facts: dict | None = field(default=None, compare=False, hash=False, repr=False)  # its hwprobe entry

    @property
    def label(self) -> str:
        return f"GPU {self.index}"


def parse_gpus(spec: str, probed: list[dict], nvml_error: str | None = None) -> list[Gpu]:
    """--gpus "0,1" / "all" against the GPUs NVML found; a clear BenchError for anything else."""
    text = (spec or "").strip()
    usable = [g for g in probed if g.get("uuid")]
    if not usable:
        why = f" ({nvml_error})" if nvml_error else ""
        raise BenchError(f"--gpus {text}: no NVIDIA GPU found{why}; drop --gpus to run on this machine's one device")
    by_index = {g["index"]: g for g in usable}
    if text.lower() == "all":
        chosen = sorted(by_index)
    else:
        chosen = []
        for part in text.split(","):
            part = part.strip()
            if not part.isdigit():
                raise BenchError(f"--gpus {text}: expected NVML indices like 0,1 or 'all', got {part!r}")
            index = int(part)
            if index not in by_index:
                seen = ", ".join(str(i) for i in sorted(by_index))
                raise BenchError(f"--gpus {text}: there is no GPU {index}; NVML sees {seen}")
            if index in chosen:
                raise BenchError(f"--gpus {text}: GPU {index} is named twice")
            chosen.append(index)
    return [Gpu(index=i, uuid=by_index[i]["uuid"], name=by_index[i].get("name"), facts=by_index[i]) for i in chosen]


def parse_split(values: Sequence[str], config_ids: Sequence[str], n_gpus: int) -> dict[str, int]:
    """--split ID[:N] -> {config id: number of GPUs}. Config ids may hold ':' themselves."""
    split: dict[str, int] = {}
    for value in values:
        config_id, count = value, n_gpus
        if value not in config_ids:
            head, sep, tail = value.rpartition(":")
            if sep and tail.isdigit() and head in config_ids:
                config_id, count = head, int(tail)
            else:
                raise BenchError(f"--split {value}: not one of this run's configurations ({', '.join(config_ids)})")
        if not 2 <= count <= n_gpus:
            raise BenchError(f"--split {value}: a split needs 2 to {n_gpus} GPUs (those of --gpus), not {count}")
        split[config_id] = count
    return split


def tensor_split(free_bytes: Sequence[int | None]) -> list[float]:
    """Each GPU's share of the layers, in proportion to its free memory (equal when unknown)."""
    if not free_bytes or any(b is None or b <= 0 for b in free_bytes):
        return [round(1.0 / len(free_bytes), 6)] * len(free_bytes) if free_bytes else []
    total = float(sum(free_bytes))
    return [round(b / total, 6) for b in free_bytes]


def nvml_free_bytes(indices: Sequence[int]) -> list[int | None]:
    """Free memory of each GPU now, from NVML in this (CUDA-free) process; None where unreadable."""
    from hwprobe.nvml import NvmlSession

    with NvmlSession() as session:
        if not session.available:
            return [None] * len(indices)
        out: list[int | None] = []
        for index in indices:
            handle = session.call(session.handle, index)
            memory = session.call(session.pynvml.nvmlDeviceGetMemoryInfo, handle) if handle is not None else None
            out.append(int(memory.free) if memory is not None else None)
        return out


@dataclass(frozen=True)
class Pinning:
    """How one configuration is pinned to its GPU(s): Orchestrator keyword arguments and a row label."""

    label: str
    gpu_uuid: str
    child_env: dict
    spec_extra: dict
    record_extra: dict
    peak_gbs: float | None = None  # the GPU's peak memory bandwidth, for the roofline figures
    peak_source: str | None = None

    def orchestrator_kwargs(self) -> dict:
        return {"gpu_uuid": self.gpu_uuid, "child_env": self.child_env, "spec_extra": self.spec_extra,
                "record_extra": self.record_extra, "peak_gbs": self.peak_gbs, "peak_source": self.peak_source}


def pin(gpus: Sequence[Gpu], free_bytes: Callable[[Sequence[int]], list] = nvml_free_bytes) -> Pinning:
    first = gpus[0]
    env = {"CUDA_VISIBLE_DEVICES": ",".join(g.uuid for g in gpus), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if len(gpus) == 1:
        from bench.roofline import peak_bandwidth

        peak_gbs, peak_source = peak_bandwidth(first.facts) if first.facts else (None, None)
        return Pinning(
            label=first.label, gpu_uuid=first.uuid, child_env=env,
            spec_extra={"gpu_index": first.index},
            record_extra={"gpu_index": first.index},
            peak_gbs=peak_gbs, peak_source=peak_source,
        )
    indices = [g.index for g in gpus]
    uuids = [g.uuid for g in gpus]
    free = free_bytes(indices)
    shares = tensor_split(free)
    # No roofline for a split: with a layer split the GPUs take turns, so no one peak applies.
    return Pinning(
        label="GPU " + "+".join(str(i) for i in indices),
        gpu_uuid=first.uuid,
        child_env=env,
        # The VRAM check reads one GPU; llama.cpp itself spreads a split model, so it is off here.
        spec_extra={"gpu_index": first.index, "gpu_indices": indices, "gpu_uuids": uuids,
                    "split_mode": SPLIT_MODE, "tensor_split": shares, "vram_check": False},
        record_extra={"gpu_index": first.index, "gpu_indices": indices, "gpu_uuids": uuids,
                      "split_mode": SPLIT_MODE, "tensor_split": shares, "free_memory_bytes": free},
    )


# --------------------------------------------------------------------------- the pool of orchestrators


class GpuPool:
    """Runs ConfigPlans over GPUs with one Orchestrator per configuration, pinned to its GPU(s).

    `make_orchestrator(display=…, **Pinning.orchestrator_kwargs())` builds
    the Orchestrator (the caller supplies the run, options, requests and resolver); `display` is a
    bench.engine.pool_display.PoolDisplay (one row per GPU worker).
    """

    def __init__(self, run, gpus: Sequence[Gpu], split: dict[str, int], make_orchestrator: Callable[..., Any],
                 display, free_bytes: Callable[[Sequence[int]], list] = nvml_free_bytes):
        self.run = run  # bench.rundir.RunDir
        self.gpus = list(gpus)
        self.split = dict(split)
        self.make_orchestrator = make_orchestrator
        self.display = display
        self.free_bytes = free_bytes
        self._running: dict[str, Any] = {}  # config id -> its Orchestrator
        self._stopping = False
        self._lock = threading.Lock()

    def run_all(self, plans: list) -> list:
        from bench.engine.orchestrator import Interrupted

        jobs = [Job(order=i, name=p.config_id, n_slots=self.split.get(p.config_id, 1), payload=p)
                for i, p in enumerate(plans)]
        pool = SlotPool(
            slots=self.gpus, run_job=self._run_job, on_error=self._on_error,
            interrupt=self._interrupt_all, is_interrupt=lambda outcome: outcome.interrupted,
            on_end=lambda job, slots, outcome: self.display.config_end(outcome.record),
        )
        self.display.run_start(len(plans))
        try:
            outcomes = pool.run(jobs)
        except PoolInterrupted:
            raise Interrupted("GPU pool") from None
        self.display.run_end()
        return outcomes

    def _run_job(self, job: Job, gpus: tuple[Gpu, ...]):
        pinning = pin(gpus, self.free_bytes)
        row = self.display.row(pinning.label)
        row.config_start(job.order + 1, job.name)
        orchestrator = self.make_orchestrator(display=row, **pinning.orchestrator_kwargs())
        with self._lock:
            self._running[job.name] = orchestrator
            if self._stopping:  # Ctrl-C came between the queue's start and here
                orchestrator.interrupt()
        try:
            outcome = orchestrator.run_config(job.payload)
            row.config_end(outcome.record)
            return outcome
        finally:
            with self._lock:
                self._running.pop(job.name, None)

    def _on_error(self, job: Job, gpus: tuple[Gpu, ...], exc: BaseException):
        """A failure outside the child (a bug, a full disk): that configuration is recorded failed."""
        from bench import records
        from bench.engine.orchestrator import ConfigOutcome

        message = " ".join(str(exc).split()) or type(exc).__name__
        record = records.ConfigRecord(
            config_id=job.name, status="failed", stage="child", n_requests=0, twin=job.payload.twin,
            gpu_uuid=gpus[0].uuid, error=f"{type(exc).__name__}: {message}",
            extra={"gpu_index": gpus[0].index, "gpu_uuids": [g.uuid for g in gpus]},
        )
        self.run.append(records.CONFIGS_FILE, record)
        self.run.log(f"[{job.name}] failed on {', '.join(g.label for g in gpus)}: {record.error}")
        return ConfigOutcome(record)

    def _interrupt_all(self) -> None:
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        # Each interrupt waits for its child (SIGTERM, then SIGKILL): stop them side by side.
        threads = [threading.Thread(target=o.interrupt, daemon=True) for o in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


# --------------------------------------------------------------------------- bench profile's side


@dataclass
class GpuPoolPlan:
    """--gpus / --split checked against this machine before any work starts."""

    gpus: list[Gpu]
    split: dict[str, int]

    def check_device(self, device) -> None:
        if device.device != "gpu":
            raise BenchError(f"--gpus runs every configuration on a GPU, but this run is planned on the "
                             f"{device.device} ({device.note}); drop --gpus or the CPU option")

    def meta(self) -> dict:
        return {"gpus": [dataclasses.asdict(g) for g in self.gpus], "split": self.split}

    def runner(self, run, options, device, requests: list[dict], display, resolve, on_config_resolved,
               host: str | None, meta: dict) -> GpuPool:
        """A GpuPool whose orchestrators share the run; the resolver and run.json are used by one
        thread at a time (gguf.lock and run.json are read-modify-write files)."""
        from bench.engine.orchestrator import Orchestrator

        lock = threading.Lock()

        def serialized(fn):
            def call(*args, **kwargs):
                with lock:
                    return fn(*args, **kwargs)
            return call

        def make_orchestrator(display, **pinned):
            return Orchestrator(run, options, device, requests, display, serialized(resolve), host=host,
                                on_config_resolved=serialized(on_config_resolved), **pinned)

        meta["gpu_pool"] = self.meta()
        return GpuPool(run, self.gpus, self.split, make_orchestrator, display)


def plan_pool(options, config_ids: Sequence[str], gpu_visible: bool, nvml_error: str | None) -> GpuPoolPlan | None:
    """None without --gpus; else the GPUs and splits, or a one-line BenchError saying what is wrong."""
    if not options.gpus:
        if options.split:
            raise BenchError("--split needs --gpus (the GPUs to split a configuration over)")
        return None
    probed: list[dict] = []
    if gpu_visible:
        from hwprobe.probe import collect

        probed = collect(include_llama=False).get("gpus", [])
    gpus = parse_gpus(options.gpus, probed, nvml_error)
    return GpuPoolPlan(gpus=gpus, split=parse_split(options.split or [], list(config_ids), len(gpus)))
