"""What machine a run ran on: GPUs (NVML), CPU, memory, OS, Python and the software that matters.

collect() returns a JSON-able dict. Every fact that cannot be read is None rather than an error,
so a probe never fails a run; without NVML, `nvml.available` is False and `nvml.error` says why.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
from typing import Any

import psutil

from hwprobe.nvml import NvmlSession, one_line, text

# Distribution names on PyPI -> the key they get under software.packages.
PACKAGES = ("llama-cpp-python", "torch", "transformers", "nvidia-ml-py", "gguf", "huggingface-hub", "psutil")

# x86 flags that decide which llama.cpp CPU kernels can run.
X86_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
# arm features: asimd is NEON; the rest gate llama.cpp's faster quantised dot products.
ARM_FLAGS = ("asimd", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16")


def collect(include_llama: bool = True) -> dict[str, Any]:
    with NvmlSession() as session:
        gpus = [_gpu_facts(session, i) for i in range(session.device_count())]
        nvml = {"available": session.available, "error": session.error, "driver_version": None, "cuda_driver_version": None}
        if session.available:
            nvml["driver_version"] = _text_or_none(session.call(session.pynvml.nvmlSystemGetDriverVersion))
            nvml["cuda_driver_version"] = _cuda_version(session.call(session.pynvml.nvmlSystemGetCudaDriverVersion))
    return {
        "host": {"hostname": socket.gethostname()},
        "gpus": gpus,
        "nvml": nvml,
        "cpu": _cpu_facts(),
        "memory": _memory_facts(),
        "os": _os_facts(),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "software": _software_facts(include_llama),
    }


# -- GPUs ----------------------------------------------------------------------------------------


def peak_mem_bandwidth_gbs(max_mem_clock_mhz: float | None, bus_width_bits: int | None) -> float | None:
    """Theoretical peak memory bandwidth in GB/s (10^9 bytes/s).

    NVML reports the memory clock at which data moves on both clock edges (GDDR6X and HBM3 are
    double data rate as NVML counts them), hence the factor 2: H100 SXM reports 2619 MHz on a
    5120-bit bus -> 2 x 2619e6 x 640 bytes = 3352 GB/s, NVIDIA's published 3.35 TB/s.
    """
    if not max_mem_clock_mhz or not bus_width_bits:
        return None
    return 2 * max_mem_clock_mhz * (bus_width_bits / 8) / 1000.0


def _gpu_facts(session: NvmlSession, index: int) -> dict[str, Any]:
    nv = session.pynvml
    call = session.call
    facts: dict[str, Any] = {"index": index}
    handle = call(session.handle, index)
    if handle is None:
        facts["error"] = "NVML could not open this GPU"
        return facts
    memory = call(nv.nvmlDeviceGetMemoryInfo, handle)
    power_limit_mw = call(nv.nvmlDeviceGetEnforcedPowerLimit, handle)
    if power_limit_mw is None:
        power_limit_mw = call(nv.nvmlDeviceGetPowerManagementLimit, handle)
    capability = call(nv.nvmlDeviceGetCudaComputeCapability, handle)
    max_mem_clock = call(nv.nvmlDeviceGetMaxClockInfo, handle, nv.NVML_CLOCK_MEM)
    bus_width = call(nv.nvmlDeviceGetMemoryBusWidth, handle)
    pci = call(nv.nvmlDeviceGetPciInfo, handle)
    facts.update(
        {
            "name": _text_or_none(call(nv.nvmlDeviceGetName, handle)),
            "uuid": _text_or_none(call(nv.nvmlDeviceGetUUID, handle)),
            "pci_bus_id": _text_or_none(pci.busId) if pci is not None else None,
            "memory_total_bytes": int(memory.total) if memory is not None else None,
            "driver_version": _text_or_none(call(nv.nvmlSystemGetDriverVersion)),
            "cuda_driver_version": _cuda_version(call(nv.nvmlSystemGetCudaDriverVersion)),
            "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
            "power_limit_w": power_limit_mw / 1000.0 if power_limit_mw is not None else None,
            "max_sm_clock_mhz": call(nv.nvmlDeviceGetMaxClockInfo, handle, nv.NVML_CLOCK_SM),
            "max_mem_clock_mhz": max_mem_clock,
            "mem_bus_width_bits": bus_width,
            "peak_mem_bandwidth_gbs": peak_mem_bandwidth_gbs(max_mem_clock, bus_width),
            "pcie_gen_current": call(nv.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            "pcie_gen_max": call(nv.nvmlDeviceGetMaxPcieLinkGeneration, handle),
            "pcie_width_current": call(nv.nvmlDeviceGetCurrPcieLinkWidth, handle),
            "pcie_width_max": call(nv.nvmlDeviceGetMaxPcieLinkWidth, handle),
        }
    )
    return facts


def _cuda_version(value: int | None) -> str | None:
    """NVML's integer CUDA version (12040) as people write it ("12.4")."""
    if value is None:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def _text_or_none(value: Any) -> str | None:
    return text(value) if value is not None else None


# -- CPU, memory, OS -----------------------------------------------------------------------------


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _cpuinfo_fields(cpuinfo: str) -> dict[str, str]:
    """The first processor's 'key: value' lines (and whole-file keys like arm's 'Hardware')."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def cpu_flags_of_interest(flags: set[str]) -> list[str]:
    """The SIMD/matrix features that decide llama.cpp's CPU speed, from /proc/cpuinfo flags."""
    found = {f for f in X86_FLAGS + ARM_FLAGS if f in flags}
    found |= {f for f in flags if f.startswith("avx512")}
    if "asimd" in flags or "neon" in flags:
        found.add("neon")
    return sorted(found)


def _cpu_facts() -> dict[str, Any]:
    info = _cpuinfo_fields(_read_text("/proc/cpuinfo") or "")
    model = info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor() or None
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "model": model,
        "arch": platform.machine() or None,
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_threads": psutil.cpu_count(logical=True),
        "usable_threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "flags": cpu_flags_of_interest(flags),
    }


def _memory_facts() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {"total_bytes": int(vm.total), "available_bytes": int(vm.available)}


def _os_release() -> dict[str, str]:
    fields = {}
    for line in (_read_text("/etc/os-release") or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


def _os_facts() -> dict[str, Any]:
    release = _os_release()
    return {
        "platform": platform.platform(),
        "system": platform.system(),
        "kernel": platform.release(),
        "distro": release.get("PRETTY_NAME") or release.get("NAME"),
    }


# -- software ------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _llama_cpp_facts(include_llama: bool) -> dict[str, Any]:
    facts: dict[str, Any] = {"system_info": None, "gpu_offload_supported": None, "error": None}
    if not include_llama:
        facts["error"] = "not probed (include_llama=False)"
        return facts
    try:
        # Imported here: loading llama.cpp's shared library is slow and may initialise CUDA.
        import llama_cpp
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from a broken shared library
        facts["error"] = f"llama_cpp is not importable: {one_line(exc)}"
        return facts
    try:
        info = llama_cpp.llama_print_system_info()
        facts["system_info"] = (info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)).strip()
        facts["gpu_offload_supported"] = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception as exc:  # noqa: BLE001
        facts["error"] = f"llama_cpp system info failed: {one_line(exc)}"
    return facts


def _software_facts(include_llama: bool) -> dict[str, Any]:
    return {
        "packages": {dist: _version(dist) for dist in PACKAGES},
        "llama_cpp": _llama_cpp_facts(include_llama),
    }
