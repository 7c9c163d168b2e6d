"""Report sections for model diagnostics: settings sweeps (`bench sweep`) and quantization damage
(`bench quant-damage`).

- `sweep_section(ctx)`: decode and prefill rates per configuration and KV depth (median over
  repetitions with p10–p90 and n), one table per swept setting (each value against the first, on
  configurations that differ only in that setting), failed loads with their reason, and a figure of
  decode rate against depth per configuration. Reads `sweep.jsonl`.
- `quant_damage_section(ctx)`: KL divergence, top-token agreement and perplexities of each compared
  pair from `quant_damage.json`, beside the pair's ROUGE-L difference where the run scored both.

Both take the report's ReportContext (ctx.run is the RunSummary, ctx.with_plots) and return None
when the run has nothing for them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure as MplFigure

from bench.rundir import read_jsonl
from bench.sweep.grid import SETTING_LABELS
from bench.sweep.records import SWEEP_FILE
from reports.document import (
    Cell,
    Column,
    Figure,
    Note,
    Paragraph,
    Section,
    Skipped,
    Table,
    missing,
    number_text,
)
from reports.stats import summarize

QUANT_DAMAGE_FILE = "quant_damage.json"
DPI = 110
SETTING_TITLES = {
    "flash_attn": "flash attention",
    "kv_type": "KV cache type",
    "n_batch": "batch size",
    "n_ubatch": "micro-batch size",
    "n_threads": "CPU threads",
    "n_gpu_layers": "GPU layers",
}


# --------------------------------------------------------------------------- data


def load_sweep(path: str | Path) -> pd.DataFrame | None:
    """sweep.jsonl as one row per measurement (settings flattened into columns); None without one."""
    file = Path(path) / SWEEP_FILE
    if not file.exists():
        return None
    rows = []
    for row in read_jsonl(file).rows:
        if not all(key in row for key in ("config_id", "depth", "rep", "status")):
            continue  # not a SweepRecord (a foreign or damaged line): the sweep tables skip it
        settings = row.get("settings") or {}
        flat = {k: v for k, v in row.items() if k not in ("settings", "extra")}
        flat.update({name: settings.get(name) for name in SETTING_LABELS})
        rows.append(flat)
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    # A measurement recorded more than once (a resumed sweep re-measuring a failed load) counts once:
    # its last successful record, else its last failure.
    frame["_key"] = list(zip(frame.config_id, frame.depth, frame.rep))
    ok = frame[frame.status == "ok"].drop_duplicates("_key", keep="last")
    failed = frame[(frame.status != "ok") & ~frame["_key"].isin(set(ok["_key"]))].drop_duplicates("_key", keep="last")
    frame = pd.concat([ok, failed]).sort_index().drop(columns="_key")
    return frame.reset_index(drop=True)


def _spread_text(values) -> tuple[str, Any]:
    s = summarize(values)
    if s.empty:
        return "—", s
    return f"{s.median:.1f} (p10–p90 {s.p10:.1f}–{s.p90:.1f}, n={s.n})", s


def sweep_axes(path: str | Path) -> dict[str, list]:
    """The value lists as the user gave them (run.json's options.axes), for ordering rows."""
    try:
        meta = json.loads((Path(path) / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    axes = (meta.get("options") or {}).get("axes") if isinstance(meta, dict) else None
    return axes if isinstance(axes, dict) else {}


def value_order(frame: pd.DataFrame, setting: str, axes: dict[str, list]) -> list:
    """A setting's values in the order the user listed them (else as first measured)."""
    seen = list(dict.fromkeys(frame[setting].tolist()))
    listed = [v for v in axes.get(setting) or [] if v in seen]
    return listed + [v for v in seen if v not in listed]


def _config_order(frame: pd.DataFrame, axes: dict[str, list]) -> list[str]:
    """Configurations in grid order: by model as given, then each setting in its listed order."""
    models = list(dict.fromkeys(frame.model_id.tolist()))
    orders = {name: value_order(frame, name, axes) for name in SETTING_LABELS}
    firsts = frame.drop_duplicates("config_id")

    def key(row):
        return (models.index(row.model_id),) + tuple(orders[n].index(getattr(row, n)) for n in SETTING_LABELS)

    return [row.config_id for row in sorted(firsts.itertuples(index=False), key=key)]


def sweep_summary_frame(path: str | Path) -> pd.DataFrame | None:
    """Per (configuration, depth): medians with spread, as text and numbers, and failures."""
    frame = load_sweep(path)
    if frame is None:
        return None
    out = []
    order = _config_order(frame, sweep_axes(path))
    for (config_id, depth), group in frame.groupby(["config_id", "depth"], sort=False):
        ok = group[group.status == "ok"]
        decode_text, decode = _spread_text(ok.decode_tps)
        prefill_text, prefill = _spread_text(ok.prefill_tps)
        failed = group[group.status != "ok"]
        out.append({
            "config_id": config_id, "model_id": group.model_id.iloc[0], "depth": int(depth),
            "decode_median": decode.median, "decode_p10": decode.p10, "decode_p90": decode.p90, "n": decode.n,
            "prefill_median": prefill.median, "prefill_p10": prefill.p10, "prefill_p90": prefill.p90,
            "decode_text": decode_text, "prefill_text": prefill_text, "n_failed": len(failed),
            "error": failed.error.dropna().iloc[0] if len(failed) and failed.error.notna().any() else None,
            "order": order.index(config_id),
            **{name: group[name].iloc[0] for name in SETTING_LABELS},
        })
    result = pd.DataFrame(out)
    return result.sort_values(["order", "depth"]).reset_index(drop=True)


def swept_settings(frame: pd.DataFrame) -> list[str]:
    """Settings that take more than one value in the sweep."""
    return [name for name in SETTING_LABELS if name in frame and frame[name].astype(str).nunique() > 1]


def setting_effect(frame: pd.DataFrame, setting: str, axes: dict[str, list] | None = None) -> pd.DataFrame:
    """Per value of `setting` and depth: median decode rate over its configurations, and the median
    ratio to the baseline over configurations that differ only in `setting` (matched pairs). The
    baseline is the first listed value that has a successful measurement."""
    ok = frame[frame.status == "ok"]
    others = [n for n in SETTING_LABELS if n != setting] + ["model_id"]
    values = value_order(frame, setting, axes or {})
    measured = set(ok[setting].tolist())
    baseline = next((v for v in values if v in measured), values[0])
    medians = ok.groupby(others + [setting, "depth"], dropna=False).decode_tps.median().reset_index()
    rows = []
    for value in values:
        for depth in sorted(frame.depth.unique()):
            here = ok[(ok[setting] == value) & (ok.depth == depth)]
            mine = medians[(medians[setting] == value) & (medians.depth == depth)]
            base = medians[(medians[setting] == baseline) & (medians.depth == depth)]
            paired = mine.merge(base, on=others + ["depth"], suffixes=("", "_base"))
            ratios = (paired.decode_tps / paired.decode_tps_base).dropna().tolist()
            s = summarize(here.decode_tps)
            r = summarize(ratios)
            rows.append({"value": value, "depth": int(depth), "median": s.median, "p10": s.p10, "p90": s.p90,
                         "n": s.n, "ratio": r.median, "n_pairs": r.n, "baseline": baseline})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- blocks


def _rate_cell(median, p10, p90, n) -> Cell:
    if median is None or pd.isna(median):
        return missing("not measured")
    return Cell(text=number_text(median, 1), value=float(median),
                detail=f"p10–p90 {number_text(p10, 1)}–{number_text(p90, 1)}, n={int(n)}",
                fields={"n": int(n), "p10": p10, "p90": p90})


def sweep_table(summary: pd.DataFrame) -> Table:
    columns = [Column("config_id", "Configuration"), Column("depth", "KV depth (tokens)"),
               Column("decode_tps", "Decode (tok/s)", "median over repetitions, p10–p90 and n beside it"),
               Column("prefill_tps", "Prefill (tok/s)", "n_prompt / time to the first sampled token"),
               Column("failed", "Failed", "repetitions whose load failed")]
    rows = []
    for r in summary.itertuples(index=False):
        failed = Cell(str(r.n_failed), r.n_failed, detail=r.error or "", flag="bad") if r.n_failed else Cell("", 0)
        rows.append([Cell(r.config_id, r.config_id), Cell(str(r.depth), r.depth),
                     _rate_cell(r.decode_median, r.decode_p10, r.decode_p90, r.n),
                     _rate_cell(r.prefill_median, r.prefill_p10, r.prefill_p90, r.n), failed])
    return Table("sweep", "Rates by configuration and KV depth", columns, rows,
                 note="Depth: tokens already in the KV cache before the timed prefill and before the timed decode.")


def setting_table(frame: pd.DataFrame, setting: str, axes: dict[str, list] | None = None) -> Table:
    effect = setting_effect(frame, setting, axes)
    depths = sorted(effect.depth.unique())
    baseline = effect.baseline.iloc[0]
    title = SETTING_TITLES.get(setting, setting)
    columns = [Column("value", title)] + [
        Column(f"d{d}", f"Decode at depth {d} (tok/s)", f"median over configurations; ×: median ratio to {baseline}")
        for d in depths
    ]
    rows = []
    for value in dict.fromkeys(effect.value.tolist()):
        row = [Cell(str(value), str(value))]
        for d in depths:
            e = effect[(effect.value == value) & (effect.depth == d)].iloc[0]
            cell = _rate_cell(e["median"], e["p10"], e["p90"], e["n"])
            if value != baseline and e["ratio"] is not None and not pd.isna(e["ratio"]):
                cell.detail = f"×{e['ratio']:.2f} vs {baseline} ({int(e['n_pairs'])} pair(s)); " + cell.detail
                cell.fields["ratio_to_baseline"] = e["ratio"]
            row.append(cell)
        rows.append(row)
    return Table(f"sweep_{setting}", f"Decode rate by {title}", columns, rows,
                 note=f"Pooled over the other swept settings; the ratio compares configurations identical but for "
                      f"{title}, against {baseline}.")


def decode_depth_figure(summary: pd.DataFrame):
    title = "Decode rate against KV depth (median, p10–p90 bars)"
    data = summary.dropna(subset=["decode_median"])
    if data.empty:
        return Skipped(title, "no successful measurement")
    fig = MplFigure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    for config_id, group in data.groupby("config_id", sort=False):
        group = group.sort_values("depth")
        for axis, prefix in ((ax, "decode"), (ax2, "prefill")):
            med = group[f"{prefix}_median"].astype(float)
            low = (med - group[f"{prefix}_p10"].astype(float)).clip(lower=0)
            high = (group[f"{prefix}_p90"].astype(float) - med).clip(lower=0)
            axis.errorbar(group.depth, med, yerr=[low, high], marker="o", ms=3, capsize=2, label=config_id)
    ax.set_xlabel("KV depth (tokens)")
    ax.set_ylabel("decode (tok/s)")
    ax.set_title("Decode", fontsize=10)
    ax2.set_xlabel("KV depth (tokens)")
    ax2.set_ylabel("prefill (tok/s)")
    ax2.set_title("Prefill", fontsize=10)
    for axis in (ax, ax2):
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    n_configs = data.config_id.nunique()
    if n_configs <= 12:
        fig.legend(*ax.get_legend_handles_labels(), fontsize=6, loc="outside lower center", ncol=2)
    fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return Figure("sweep_decode_depth", title, buf.getvalue(),
                  "One line per configuration; points: median over repetitions; bars: p10–p90.")


def sweep_section(ctx) -> Section | None:
    """The sweep's section of `bench report`, or None when the run holds no sweep.jsonl."""
    path = ctx.run.path
    frame = load_sweep(path)
    if frame is None:
        return None
    summary = sweep_summary_frame(path)
    meta = getattr(ctx.run, "meta", {}) or {}
    options = meta.get("options", {}) if isinstance(meta.get("options"), dict) else {}
    n_ok = int((frame.status == "ok").sum())
    blocks: list = [Paragraph(
        f"{frame.config_id.nunique()} configuration(s), {frame.depth.nunique()} KV depth(s), "
        f"{n_ok} successful measurement(s), {int((frame.status != 'ok').sum())} failed; "
        f"prefill {options.get('n_prompt', frame.n_prompt.iloc[0])} tokens, decode "
        f"{options.get('n_gen', frame.n_gen.iloc[0])} tokens per test, order {options.get('order', '?')} "
        f"(seed {options.get('seed', '?')}), delay {options.get('delay_s', 0)} s between tests."
    )]
    blocks.append(sweep_table(summary))
    axes = sweep_axes(path)
    for setting in swept_settings(frame):
        blocks.append(setting_table(frame, setting, axes))
    spills = frame.dropna(subset=["spill"]) if "spill" in frame else frame.iloc[0:0]
    for config_id, group in spills.groupby("config_id", sort=False):
        blocks.append(Note(f"{config_id}: not all on the GPU — {group.spill.iloc[0]}", "warn"))
    if ctx.with_plots:
        blocks.append(decode_depth_figure(summary))
    blocks.append(Note(
        "Method: each load fills the KV cache with `depth` random tokens, times a prefill of n_prompt tokens, "
        "drops them, then times n_gen greedy tokens (end-of-generation ignored), as llama-bench -d does. "
        "Decode includes greedy sampling where bench profile samples (in the graph on a GPU, else on the CPU)."
    ))
    return Section("sweep", "Sweep: rates against KV depth", blocks)


# --------------------------------------------------------------------------- quantization damage


def load_quant_damage(path: str | Path) -> list[dict[str, Any]]:
    file = Path(path) / QUANT_DAMAGE_FILE
    if not file.exists():
        return []
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    comparisons = data.get("comparisons", []) if isinstance(data, dict) else []
    return [c for c in comparisons if isinstance(c, dict)]


def _rouge_mean(run, config_id: str | None) -> float | None:
    for c in getattr(run, "configs", []):
        if c.config_id == config_id and getattr(c, "mode", "plain") == "plain":
            return c.q("rougeL").mean
    return None


def quant_damage_section(ctx) -> Section | None:
    comparisons = load_quant_damage(ctx.run.path)
    if not comparisons:
        return None
    columns = [
        Column("quant", "Quantized"), Column("reference", "Reference"),
        Column("kld_mean", "KLD mean (nats)", "KL(P_ref || P_quant) per token, ± standard error of the mean"),
        Column("kld_p99", "KLD p99"), Column("kld_max", "KLD max"),
        Column("same_top", "Same top token (%)"),
        Column("ppl_quant", "PPL quant"), Column("ppl_ref", "PPL reference"),
        Column("rouge_diff", "ROUGE-L quant − ref", "mean ROUGE-L of this run's scored outputs"),
    ]
    rows = []
    for c in comparisons:
        kld = c.get("kld", {})
        rq, rr = _rouge_mean(ctx.run, c.get("quant_id")), _rouge_mean(ctx.run, c.get("reference_id"))
        diff = rq - rr if rq is not None and rr is not None else None
        rows.append([
            Cell(str(c.get("quant_id")), c.get("quant_id")), Cell(str(c.get("reference_id")), c.get("reference_id")),
            Cell(f"{kld.get('mean', 0):.4f}", kld.get("mean"), detail=f"± {kld.get('sem', 0):.4f}, n={c.get('n_tokens')}"),
            Cell(f"{kld.get('p99', 0):.4f}", kld.get("p99")), Cell(f"{kld.get('max', 0):.4f}", kld.get("max")),
            Cell(f"{100 * c.get('same_top', {}).get('share', 0):.1f}", c.get("same_top", {}).get("share"),
                 detail=f"± {100 * c.get('same_top', {}).get('sem', 0):.1f}"),
            Cell(f"{c.get('ppl', {}).get('quant', 0):.3f}", c.get("ppl", {}).get("quant")),
            Cell(f"{c.get('ppl', {}).get('reference', 0):.3f}", c.get("ppl", {}).get("reference")),
            Cell(f"{diff:+.3f}", diff) if diff is not None else missing("the run did not score both configurations"),
        ])
    table = Table("quant_damage", "Quantization damage", columns, rows,
                  note="Over the shipped reference text, in chunks of n_ctx tokens with the second half of each scored, "
                       "as llama-perplexity --kl-divergence does.")
    return Section("quant_damage", "Quantization damage", [table])


# --------------------------------------------------------------------------- VRAM prediction


def vram_section(ctx) -> Section | None:
    """Predicted against measured GPU memory per configuration (bench.vram, recorded by the engine
    in ConfigRecord.extra), with any spill flagged; None when no configuration has a prediction."""
    records = getattr(ctx.run, "config_records", {}) or {}
    rows = []
    notes = []
    for config_id, rec in records.items():
        extra = rec.extra or {}
        if extra.get("spill"):
            notes.append(Note(f"{config_id}: not all on the GPU — {extra['spill']}", "warn"))
        if extra.get("vram_predicted_bytes") is None:
            continue
        predicted, measured = extra.get("vram_predicted_bytes"), extra.get("vram_measured_bytes")
        error = extra.get("vram_prediction_error_pct")
        buffers = extra.get("vram_llama_buffers_bytes") or {}
        rows.append([
            Cell(config_id, config_id),
            Cell(f"{predicted / 2**30:.2f}", predicted / 2**30),
            Cell(f"{measured / 2**30:.2f}", measured / 2**30, detail=str(extra.get("vram_measured_source") or ""))
            if measured is not None else missing("no NVML figure"),
            Cell(f"{error:+.1f}", error, flag="warn" if abs(error) > 5 else "") if error is not None else missing(""),
            Cell(", ".join(f"{k} {v / 2**20:.0f}" for k, v in sorted(buffers.items())) or "—", None),
            Cell(extra.get("spill") or extra.get("partial_offload") or "", None,
                 flag="bad" if extra.get("spill") else ""),
        ])
    if not rows and not notes:
        return None
    blocks: list = []
    if rows:
        blocks.append(Table("vram", "GPU memory: predicted before loading, measured after", [
            Column("config_id", "Configuration"), Column("predicted_gib", "Predicted (GiB)",
                                                         "weights + KV cache + compute buffers + CUDA overhead"),
            Column("measured_gib", "Measured (GiB)", "NVML: the process's memory, or the rise in device use"),
            Column("error_pct", "Error (%)", "(predicted − measured) / measured"),
            Column("llama_buffers", "llama.cpp device buffers (MiB)"), Column("offload", "Offload"),
        ], rows))
    return Section("vram", "GPU memory", blocks + notes)
