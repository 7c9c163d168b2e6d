"""NVML access for the probe and the sampler: one init/shutdown pair per user, guarded reads.

NVML reference-counts nvmlInit/nvmlShutdown, so every NvmlSession may init and shut down on its
own; the only process-wide state is what pynvml itself keeps.
"""

from __future__ import annotations

import os
from typing import Any, Callable

# Bits of nvmlDeviceGetCurrentClocksEventReasons (formerly "throttle reasons"), named the way
# nvidia-smi -q names them. The values are NVML's ABI and do not change between drivers.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# The GPU fields of a telemetry sample, as a reader returns them.
GPU_SAMPLE_FIELDS = (
    "power_w",
    "energy_mj",
    "mem_used_bytes",
    "proc_mem_bytes",
    "gpu_util_pct",
    "mem_util_pct",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "temp_c",
    "throttle_reasons",
)


def text(value: Any) -> str:
    """NVML strings come back as bytes from older pynvml releases and as str from newer ones."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def clock_event_names(mask: int) -> list[str]:
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    known = 0
    for bit in CLOCK_EVENT_REASONS:
        known |= bit
    if mask & ~known:
        names.append(f"other_0x{mask & ~known:x}")
    return names


def one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class NvmlSession:
    """NVML opened for one user (the probe, one sampler). Use as a context manager or open()/close().

    `available` is False, with the reason in `error` (one line), when pynvml is missing, the NVIDIA
    driver is not there, or NVML sees no GPU.
    """

    def __init__(self) -> None:
        self.available = False
        self.error: str | None = None
        self.pynvml: Any = None
        self._initialised = False

    def open(self) -> "NvmlSession":
        if self._initialised:
            return self
        try:
            import pynvml
        except ImportError:
            self.error = "pynvml (package nvidia-ml-py) is not installed"
            return self
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.error = f"NVML could not start (no NVIDIA driver?): {one_line(exc)}"
            return self
        self.pynvml = pynvml
        self._initialised = True
        try:
            count = pynvml.nvmlDeviceGetCount()
        except Exception as exc:  # noqa: BLE001
            self.error = f"NVML could not count GPUs: {one_line(exc)}"
            return self
        if count == 0:
            self.error = "NVML is loaded but sees no NVIDIA GPU"
            return self
        self.available = True
        return self

    def close(self) -> None:
        if self._initialised:
            self._initialised = False
            self.available = False
            try:
                self.pynvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down must not fail the caller
                pass

    def __enter__(self) -> "NvmlSession":
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def device_count(self) -> int:
        return self.pynvml.nvmlDeviceGetCount() if self.available else 0

    def handle(self, index: int) -> Any:
        return self.pynvml.nvmlDeviceGetHandleByIndex(index)

    def call(self, fn: Callable, *args) -> Any:
        """fn(*args), or None where the card or driver cannot give it (NotSupported, NoPermission …)."""
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - any one field failing must not lose the others
            return None


class NvmlTelemetryReader:
    """Reads one GPU's telemetry fields for one process; the sampler's default reader.

    The reader protocol the sampler relies on (tests pass fakes): attributes `available` and
    `reason`, `read() -> dict` over GPU_SAMPLE_FIELDS (missing keys count as None), `close()`.
    The device handle is looked up once; a field the card reports NotSupported is not asked
    for again, so a sample costs only the calls that can answer.
    """

    def __init__(self, gpu_index: int = 0, pid: int | None = None) -> None:
        self.gpu_index = gpu_index
        self.pid = os.getpid() if pid is None else pid
        self.session = NvmlSession().open()
        self.available = False
        self.reason: str | None = self.session.error
        self.power_source: str | None = None  # "instant" | "average" once a power reading came back
        self._handle = None
        self._unsupported: set[str] = set()
        if not self.session.available:
            return
        count = self.session.device_count()
        if not 0 <= gpu_index < count:
            self.reason = f"GPU index {gpu_index} is out of range: NVML sees {count} GPU(s)"
            self.session.close()
            return
        try:
            self._handle = self.session.handle(gpu_index)
        except Exception as exc:  # noqa: BLE001
            self.reason = f"NVML could not open GPU {gpu_index}: {one_line(exc)}"
            self.session.close()
            return
        self.available = True
        self.reason = None

    def close(self) -> None:
        self.available = False
        self.session.close()

    def _get(self, name: str, fn: Callable[[], Any]) -> Any:
        if name in self._unsupported:
            return None
        nv = self.session.pynvml
        try:
            return fn()
        except nv.NVMLError_NotSupported:
            self._unsupported.add(name)
            return None
        except (nv.NVMLError_FunctionNotFound, AttributeError):
            # An older driver, or an older pynvml that lacks the call.
            self._unsupported.add(name)
            return None
        except nv.NVMLError:
            # Transient (GPU busy, timeout) or permission errors: None for this tick only.
            return None

    def _power_w(self) -> float | None:
        nv = self.session.pynvml
        h = self._handle
        # nvmlDeviceGetPowerUsage is a one-second running average on Ampere and later (driver
        # 530+), which smears the peaks of short requests; the instant field is what we want
        # where the driver has it.
        if "power_instant" not in self._unsupported:
            try:
                (value,) = nv.nvmlDeviceGetFieldValues(h, [nv.NVML_FI_DEV_POWER_INSTANT])
                if value.nvmlReturn == nv.NVML_SUCCESS:
                    self.power_source = "instant"
                    return _field_number(nv, value) / 1000.0
                self._unsupported.add("power_instant")
            except nv.NVMLError:
                self._unsupported.add("power_instant")
        milliwatts = self._get("power_average", lambda: nv.nvmlDeviceGetPowerUsage(h))
        if milliwatts is None:
            return None
        self.power_source = "average"
        return milliwatts / 1000.0

    def _proc_mem_bytes(self) -> int | None:
        nv = self.session.pynvml
        procs = self._get("processes", lambda: nv.nvmlDeviceGetComputeRunningProcesses(self._handle))
        if not procs:
            return None
        for proc in procs:
            # Inside a container NVML reports host pids, so no match is common: None, not 0.
            if proc.pid == self.pid:
                used = proc.usedGpuMemory
                return int(used) if used is not None else None
        return None

    def _clock_events(self) -> list[str] | None:
        nv = self.session.pynvml
        h = self._handle
        mask = self._get("clock_events", lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h))
        if mask is None and "clock_events" in self._unsupported:
            # Drivers before 535 only know the older name of the same bit mask.
            mask = self._get("throttle", lambda: nv.nvmlDeviceGetCurrentClocksThrottleReasons(h))
        return clock_event_names(mask) if mask is not None else None

    def read(self) -> dict[str, Any]:
        if not self.available:
            return {}
        nv = self.session.pynvml
        h = self._handle
        # Energy first: the sampler stamps the sample just before read(), and energy is the field
        # whose timing matters most (windows interpolate the counter in time).
        energy_mj = self._get("energy", lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h))
        power_w = self._power_w()
        memory = self._get("memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        util = self._get("utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        return {
            "power_w": power_w,
            "energy_mj": float(energy_mj) if energy_mj is not None else None,
            "mem_used_bytes": int(memory.used) if memory is not None else None,
            "proc_mem_bytes": self._proc_mem_bytes(),
            "gpu_util_pct": float(util.gpu) if util is not None else None,
            "mem_util_pct": float(util.memory) if util is not None else None,
            "sm_clock_mhz": self._get("sm_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            "mem_clock_mhz": self._get("mem_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            "temp_c": _float_or_none(
                self._get("temp", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            ),
            "throttle_reasons": self._clock_events(),
        }


def _float_or_none(value: Any) -> float | None:
    return float(value) if value is not None else None


def _field_number(nv: Any, field: Any) -> float:
    """The number inside an nvmlFieldValue_t, whichever member its valueType names."""
    member = {
        nv.NVML_VALUE_TYPE_DOUBLE: "dVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        nv.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    }.get(field.valueType, "uiVal")
    return float(getattr(field.value, member))
