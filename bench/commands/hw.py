"""`bench hw`: what this machine is — GPUs, CPU, memory, OS, Python, and the software bench uses."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

import click


@contextlib.contextmanager
def _stdout_kept_clean():
    """Send anything printed while probing to stderr, so --json leaves nothing but JSON on stdout.

    llama.cpp and the CUDA runtime print from C, below Python's sys.stdout, hence the fd swap.
    """
    sys.stdout.flush()
    try:
        saved_fd = os.dup(1)
    except OSError:
        saved_fd = None
    try:
        if saved_fd is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


def _no_gpu_line(facts: dict[str, Any]) -> str | None:
    nvml = facts["nvml"]
    if nvml["available"] and facts["gpus"]:
        return None
    return f"No NVIDIA GPU found through NVML, so no GPU figures: {nvml['error'] or 'NVML lists no GPU'}"


def _gib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**30:.1f} GiB"


def _text(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        value = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return f"{value}{unit}"


def _pair(current: Any, maximum: Any, unit: str = "") -> str:
    return f"{_text(current)} (max {_text(maximum)}){unit}"


def _kv_table(title: str, rows: list[tuple[str, str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _render(facts: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    line = _no_gpu_line(facts)
    if line:
        console.print(f"[yellow]{line}[/yellow]")
    for gpu in facts["gpus"]:
        console.print(
            _kv_table(
                f"GPU {gpu['index']}: {gpu.get('name') or 'unknown'}",
                [
                    ("uuid", _text(gpu.get("uuid"))),
                    ("memory", _gib(gpu.get("memory_total_bytes"))),
                    ("peak memory bandwidth", _text(gpu.get("peak_mem_bandwidth_gbs"), " GB/s")),
                    ("memory bus", _text(gpu.get("mem_bus_width_bits"), " bit")),
                    ("max SM clock", _text(gpu.get("max_sm_clock_mhz"), " MHz")),
                    ("max memory clock", _text(gpu.get("max_mem_clock_mhz"), " MHz")),
                    ("power limit", _text(gpu.get("power_limit_w"), " W")),
                    ("compute capability", _text(gpu.get("compute_capability"))),
                    ("PCIe generation", _pair(gpu.get("pcie_gen_current"), gpu.get("pcie_gen_max"))),
                    ("PCIe width", _pair(gpu.get("pcie_width_current"), gpu.get("pcie_width_max"), " lanes")),
                    ("driver / CUDA", f"{_text(gpu.get('driver_version'))} / {_text(gpu.get('cuda_driver_version'))}"),
                ],
            )
        )
        console.print()
    cpu, memory, os_facts, python = facts["cpu"], facts["memory"], facts["os"], facts["python"]
    console.print(
        _kv_table(
            f"Host: {facts['host']['hostname']}",
            [
                ("CPU", _text(cpu["model"])),
                ("cores", f"{_text(cpu['physical_cores'])} physical, {_text(cpu['logical_threads'])} logical"),
                ("CPU features", ", ".join(cpu["flags"]) or "—"),
                ("memory", f"{_gib(memory['total_bytes'])} total, {_gib(memory['available_bytes'])} available"),
                ("OS", f"{_text(os_facts['distro'])} (kernel {_text(os_facts['kernel'])})"),
                ("Python", f"{python['version']} ({python['executable']})"),
            ],
        )
    )
    console.print()
    software = facts["software"]
    llama = software["llama_cpp"]
    rows = [(name, version or "not installed") for name, version in software["packages"].items()]
    rows.append(("llama.cpp GPU offload", _text(llama["gpu_offload_supported"])))
    rows.append(("llama.cpp system info", llama["system_info"] or f"— ({llama['error']})"))
    console.print(_kv_table("Software", rows))


@click.command(name="hw")
@click.option("--json", "as_json", is_flag=True, help="Print the probe as JSON on stdout.")
def command(as_json: bool) -> None:
    """Show this machine's GPUs (NVML), CPU, memory, OS and software versions."""
    from hwprobe.probe import collect

    if as_json:
        with _stdout_kept_clean():
            facts = collect()
        line = _no_gpu_line(facts)
        if line:
            click.echo(line, err=True)
        click.echo(json.dumps(facts, indent=2))
        return
    _render(collect())
