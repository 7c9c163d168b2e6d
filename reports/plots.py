"""The report's figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

matplotlib.figure.Figure is used directly (no pyplot), so drawing needs no display, touches no
global backend state and leaves no figures open. A plot whose data is absent comes back as a
Skipped block saying why, never as an empty chart.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure as MplFigure

from reports.aggregate import ConfigSummary, RunSummary
from reports.document import Figure, Skipped
from reports.stats import pareto_front

TIER_COLOURS = {"A": "#3b7dd8", "B": "#d8733b"}
DEFAULT_COLOUR = "#6b7a8f"
DPI = 110


def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _colour(c: ConfigSummary) -> str:
    return TIER_COLOURS.get((c.tier or "").upper(), DEFAULT_COLOUR)


def _barh(title: str, xlabel: str, configs: list[ConfigSummary], values, low=None, high=None, log=False) -> bytes:
    height = max(2.2, 0.32 * len(configs) + 1.0)
    fig = MplFigure(figsize=(8.5, height))
    ax = fig.add_subplot()
    ys = list(range(len(configs)))[::-1]
    xerr = None
    if low is not None and high is not None:
        xerr = [[max(v - lo, 0) for v, lo in zip(values, low)], [max(hi - v, 0) for v, hi in zip(values, high)]]
    bars = ax.barh(ys, values, xerr=xerr, color=[_colour(c) for c in configs], ecolor="#333", capsize=2)
    for bar, c in zip(bars, configs):
        if c.twin:
            bar.set_hatch("//")
            bar.set_alpha(0.6)
    ax.set_yticks(ys, [c.label + (" (twin)" if c.twin else "") for c in configs], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    if log:
        ax.set_xscale("log")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    tiers = sorted({(c.tier or "").upper() for c in configs} & set(TIER_COLOURS))
    if tiers:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=TIER_COLOURS[t], label=f"tier {t}") for t in tiers],
            fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    return _png(fig)


def rouge_l(run: RunSummary):
    title = "ROUGE-L by configuration (all tasks, mean ± sd)"
    cs = [c for c in run.configs if c.q("rougeL").mean is not None]
    if not cs:
        return Skipped(title, _no_quality_reason(run))
    values = [c.q("rougeL").mean for c in cs]
    sds = [c.q("rougeL").sd or 0.0 for c in cs]
    png = _barh(title, "ROUGE-L (F1)", cs, values, [v - s for v, s in zip(values, sds)], [v + s for v, s in zip(values, sds)])
    return Figure("rouge_l", title, png, "Bars: mean ROUGE-L over scored outputs; whiskers: ± one sd.")


def factual(run: RunSummary):
    title = "Factual consistency by configuration (mean ± sd)"
    cs = [c for c in run.configs if c.q("factual_nli").mean is not None]
    if not cs:
        reason = _no_quality_reason(run) if not any(c.scored for c in run.configs) else (
            "no factual-consistency scores: the scorer had no NLI model"
        )
        return Skipped(title, reason)
    values = [c.q("factual_nli").mean for c in cs]
    sds = [c.q("factual_nli").sd or 0.0 for c in cs]
    png = _barh(title, "factual consistency (NLI)", cs, values, [v - s for v, s in zip(values, sds)], [v + s for v, s in zip(values, sds)])
    return Figure("factual", title, png, "Bars: mean NLI factual consistency; whiskers: ± one sd.")


def tps_log(run: RunSummary):
    title = "Decode tokens per second (log scale)"
    cs = [c for c in run.configs if c.t("decode_tps").median]
    if not cs:
        return Skipped(title, "no request has a decode TPS (every output was shorter than two tokens)")
    t = [c.t("decode_tps") for c in cs]
    png = _barh(title, "decode tokens/s (log)", cs, [s.median for s in t], [s.p10 for s in t], [s.p90 for s in t], log=True)
    return Figure("tps", title, png, "Bars: median decode TPS; whiskers: p10–p90 over requests; hatched: twins.")


def json_parse_schema(run: RunSummary):
    title = "JSON parse rate (strict) vs schema compliance"
    cs = [c for c in run.configs if c.s("json_parse_strict").n]
    if not cs:
        return Skipped(title, _no_quality_reason(run) if not any(c.scored for c in run.configs) else "no JSON variant was scored")
    height = max(2.2, 0.42 * len(cs) + 1.0)
    fig = MplFigure(figsize=(8.5, height))
    ax = fig.add_subplot()
    ys = list(range(len(cs)))[::-1]
    parse = [c.s("json_parse_strict").pct for c in cs]
    schema = [c.s("schema_ok").pct or 0.0 for c in cs]
    ax.barh([y + 0.2 for y in ys], parse, height=0.4, label="parse % (strict)", color="#3b7dd8")
    ax.barh([y - 0.2 for y in ys], schema, height=0.4, label="schema %", color="#2a9d6f")
    ax.set_yticks(ys, [c.label for c in cs], fontsize=8)
    ax.set_xlim(0, 105)
    ax.set_xlabel("% of JSON outputs")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return Figure("json_parse_schema", title, _png(fig), "The gap between the bars is JSON that parses but has the wrong structure.")


def frontier(run: RunSummary):
    title = "Quality–speed frontier"
    cs = [c for c in run.configs if c.t("decode_tps").median and c.q("rougeL").mean is not None]
    if len(cs) < 2:
        return Skipped(title, "needs at least two configurations with both decode TPS and ROUGE-L")
    points = [(c.t("decode_tps").median, c.q("rougeL").mean) for c in cs]
    front = set(pareto_front(points))
    fig = MplFigure(figsize=(8.5, 5.2))
    ax = fig.add_subplot()
    for i, (c, (x, y)) in enumerate(zip(cs, points)):
        on = i in front
        ax.scatter([x], [y], s=60 if on else 30, color=_colour(c), edgecolor="black" if on else "none", zorder=3)
        ax.annotate(c.label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ordered = sorted((points[i] for i in front), key=lambda p: p[0])
    if len(ordered) > 1:
        ax.plot([p[0] for p in ordered], [p[1] for p in ordered], "--", color="#444", lw=1, zorder=2, label="Pareto set")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("decode tokens/s (median, log)")
    ax.set_ylabel("ROUGE-L (mean)")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    names = ", ".join(cs[i].label for i in sorted(front, key=lambda i: points[i][0]))
    return Figure("frontier", title, _png(fig), f"Outlined points form the Pareto set (nothing is both faster and better): {names}.")


def energy(run: RunSummary):
    title = "Energy per generated token"
    cs = [c for c in run.configs if c.t("energy_per_token_j").median is not None]
    if not cs:
        return Skipped(title, "no energy readings: NVML was not available when the run was recorded")
    t = [c.t("energy_per_token_j") for c in cs]
    png = _barh(title, "J per generated token (median)", cs, [s.median for s in t], [s.p10 for s in t], [s.p90 for s in t])
    return Figure("energy", title, png, "Bars: median GPU energy per generated token; whiskers: p10–p90 over requests.")


def itl_trace(run: RunSummary):
    title = "Inter-token latency over one request"
    candidates = [r for r in run.requests if len(r.token_times_ms or []) >= 3]
    if not candidates:
        return Skipped(title, "no request recorded three or more token times")
    # The longest generation shows the most of the pacing; non-twins first, then a stable key.
    req = max(candidates, key=lambda r: (not r.twin, len(r.token_times_ms), r.key))
    times = [float(t) for t in req.token_times_ms]
    gaps = [b - a for a, b in zip(times, times[1:])]
    fig = MplFigure(figsize=(8.5, 3.6))
    ax = fig.add_subplot()
    ax.plot(times[1:], gaps, lw=0.9, color="#3b7dd8")
    ax.axhline(sorted(gaps)[len(gaps) // 2], color="#d8733b", lw=1, ls="--", label="median gap")
    ax.set_xlabel("ms since request start")
    ax.set_ylabel("gap to previous token (ms)")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    caption = (
        f"{req.config_id}, {req.request_id}, rep {req.rep}, mode {req.mode}: {len(times)} tokens "
        f"(the longest generation in the run); first token at {times[0]:.0f} ms."
    )
    return Figure("itl_trace", title, _png(fig), caption)


def _no_quality_reason(run: RunSummary) -> str:
    if not run.has_scores:
        return f"not scored: run bench score {run.path}"
    if all(c.twin for c in run.configs):
        return "only twins ran (timing only)"
    return "no scored outputs"


REPORT_PLOTS = (rouge_l, factual, tps_log, json_parse_schema, frontier, energy, itl_trace)
