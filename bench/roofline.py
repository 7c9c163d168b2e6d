"""Roofline: how close decoding comes to the GPU's memory bandwidth.

Decoding one token reads every weight once, so a configuration's achieved weight bandwidth is
model bytes x decode tokens per second. As a share of the card's peak memory bandwidth it says
how much speed is left on the table (a share near 1 is as fast as that card can go with those
weights; batching is the only way past it). `model_bytes` is llama.cpp's tensor size of the file
(llama_model_size); with separate input and output embeddings the input table is only read one
row per token, so for those models the share is a slight overestimate.

Peak bandwidth comes from the hardware probe (`peak_mem_bandwidth_gbs`, from NVML's maximum
memory clock and bus width) or, failing that, from a table of common cards by name.

Field names (ConfigRecord.extra["roofline"], calibration.json "roofline"):
    model_bytes, decode_tps, achieved_gbs, peak_gbs, peak_source, share_of_peak
RequestRecord.extra: weight_gbs (this request's model_bytes x decode_tps / 1e9) and
weight_bw_share (that over peak_gbs), when the peak is known.
"""

from __future__ import annotations

import re
from typing import Any

# Published peak memory bandwidth, GB/s (10^9 bytes/s); the first matching pattern wins, so the
# more specific names come first.
CARD_PEAK_GBS: tuple[tuple[str, float], ...] = (
    (r"H200", 4800.0),
    (r"H100.*NVL", 3900.0),
    (r"H100.*PCIe", 2000.0),
    (r"H100", 3350.0),  # SXM5 80 GB
    (r"GH200", 4000.0),
    (r"A100.*80", 2039.0),
    (r"A100", 1555.0),
    (r"L40S", 864.0),
    (r"L40", 864.0),
    (r"L4\b", 300.0),
    (r"A10G", 600.0),
    (r"A10\b", 600.0),
    (r"T4\b", 320.0),
    (r"V100", 900.0),
    (r"RTX 6000 Ada", 960.0),
    (r"RTX 5090", 1792.0),
    (r"RTX 4090", 1008.0),
    (r"RTX 4080", 717.0),
    (r"RTX 3090", 936.0),
)


def table_peak_gbs(card_name: str | None) -> float | None:
    if not card_name:
        return None
    for pattern, gbs in CARD_PEAK_GBS:
        if re.search(pattern, card_name, re.IGNORECASE):
            return gbs
    return None


def peak_bandwidth(gpu: dict[str, Any] | None) -> tuple[float | None, str | None]:
    """(peak GB/s, where it came from) for one GPU entry of the hardware probe."""
    if not gpu:
        return None, None
    measured = gpu.get("peak_mem_bandwidth_gbs")
    if measured:
        return float(measured), "nvml"
    name = gpu.get("name")
    from_table = table_peak_gbs(name)
    if from_table:
        return from_table, f"table:{name}"
    return None, None


def gpu_entry(hardware: dict[str, Any] | None, index: int = 0) -> dict[str, Any] | None:
    """The probe's entry for GPU `index` (run.json "hardware"), or None."""
    for gpu in (hardware or {}).get("gpus", []) or []:
        if gpu.get("index") == index:
            return gpu
    return None


def roofline(model_bytes: int | None, decode_tps: float | None, peak_gbs: float | None,
             peak_source: str | None = None) -> dict[str, Any] | None:
    """The roofline figures of one configuration; None when bytes or speed are unknown."""
    if not model_bytes or not decode_tps:
        return None
    achieved = model_bytes * decode_tps / 1e9
    return {
        "model_bytes": int(model_bytes),
        "decode_tps": float(decode_tps),
        "achieved_gbs": achieved,
        "peak_gbs": peak_gbs,
        "peak_source": peak_source,
        "share_of_peak": achieved / peak_gbs if peak_gbs else None,
    }


def request_figures(model_bytes: int | None, decode_tps: float | None, peak_gbs: float | None) -> dict[str, float]:
    """Per-request extra fields: weight_gbs and, with a known peak, weight_bw_share."""
    if not model_bytes or not decode_tps:
        return {}
    gbs = model_bytes * decode_tps / 1e9
    out = {"weight_gbs": gbs}
    if peak_gbs:
        out["weight_bw_share"] = gbs / peak_gbs
    return out


def describe(fig: dict[str, Any] | None) -> str:
    """One line for terminals: '812 GB/s of 3352 GB/s peak (24%)'."""
    if not fig:
        return "roofline: n/a (no decode speed or model size)"
    text = f"{fig['achieved_gbs']:.0f} GB/s weight traffic"
    if fig.get("peak_gbs"):
        text += f" of {fig['peak_gbs']:.0f} GB/s peak ({100 * fig['share_of_peak']:.0f}%, peak from {fig['peak_source']})"
    else:
        text += " (peak bandwidth unknown)"
    return text
