"""Findings read off the aggregates: each is a rule over the numbers, never a name written in."""

from __future__ import annotations

from itertools import combinations

from reports.aggregate import ConfigSummary, RunSummary
from reports.recommend import MAX_REPETITION, MIN_LENGTH_OK_PCT

PARSE_HIGH_PCT = 80.0
PARSE_SCHEMA_GAP_PCT = 30.0
LENIENT_GAP_PCT = 20.0
EXTRANEOUS_HIGH_PCT = 50.0
TRUNCATED_HIGH_PCT = 10.0
UNSUPPORTED_NUMBER_SHARE_HIGH = 0.10
TPS_SPREAD_RATIO = 1.25  # p90 / p10 of decode TPS above which timing is called unsteady


def findings(run: RunSummary) -> list[str]:
    scored = [c for c in run.configs if c.scored and c.status != "failed"]
    timed = [c for c in run.configs if c.t("decode_tps").median is not None]
    out: list[str] = []
    out += _leaders(scored, timed)
    out += _json_findings(scored)
    out += _text_findings(scored)
    out += _quantization(scored)
    out += _size_vs_quality(scored)
    out += _run_health(run)
    return out


def _leaders(scored: list[ConfigSummary], timed: list[ConfigSummary]) -> list[str]:
    out = []
    with_rouge = [c for c in scored if c.q("rougeL").mean is not None]
    if len(with_rouge) >= 2:
        best = max(with_rouge, key=lambda c: c.q("rougeL").mean)
        worst = min(with_rouge, key=lambda c: c.q("rougeL").mean)
        out.append(
            f"Highest ROUGE-L: {best.label} ({best.q('rougeL').mean:.3f}, n={best.q('rougeL').n}); "
            f"lowest: {worst.label} ({worst.q('rougeL').mean:.3f})."
        )
    if len(timed) >= 2:
        fast = max(timed, key=lambda c: c.t("decode_tps").median)
        slow = min(timed, key=lambda c: c.t("decode_tps").median)
        ratio = fast.t("decode_tps").median / slow.t("decode_tps").median
        out.append(
            f"Fastest decode: {fast.label} at {fast.t('decode_tps').median:.1f} tok/s (median, n={fast.t('decode_tps').n}), "
            f"{ratio:.1f}× the slowest ({slow.label}, {slow.t('decode_tps').median:.1f} tok/s)."
        )
    return out


def _json_findings(scored: list[ConfigSummary]) -> list[str]:
    out = []
    for c in scored:
        parse, lenient, schema = c.s("json_parse_strict"), c.s("json_parse_lenient"), c.s("schema_ok")
        if parse.n and schema.n and parse.pct >= PARSE_HIGH_PCT and parse.pct - schema.pct >= PARSE_SCHEMA_GAP_PCT:
            out.append(
                f"{c.label}: parse rate high but schema compliance low — {parse.pct:.1f}% of JSON outputs parse "
                f"({parse.k}/{parse.n}) but only {schema.pct:.1f}% ({schema.k}/{schema.n}) match the schema."
            )
        if parse.n and lenient.n and lenient.pct - parse.pct >= LENIENT_GAP_PCT:
            out.append(
                f"{c.label}: {lenient.pct:.1f}% parse once fences or surrounding text are stripped, but only "
                f"{parse.pct:.1f}% as sent — strip its output before json.loads."
            )
        extra = c.s("extraneous")
        if extra.n and extra.pct >= EXTRANEOUS_HIGH_PCT:
            out.append(f"{c.label}: adds text around the JSON in {extra.pct:.1f}% of JSON outputs ({extra.k}/{extra.n}).")
    return out


def _text_findings(scored: list[ConfigSummary]) -> list[str]:
    out = []
    reps = [c.q("repetition").mean for c in scored if c.q("repetition").mean is not None]
    # Set against the run's median only where there are enough configurations for a median to mean much.
    typical = sorted(reps)[len(reps) // 2] if len(reps) >= 3 else None
    for c in scored:
        rep = c.q("repetition").mean
        if rep is not None and rep > MAX_REPETITION:
            times = f", {rep / typical:.0f}× the run's median" if typical and rep / typical >= 2 else ""
            out.append(f"{c.label}: repetition {rep:.3f} (above {MAX_REPETITION}{times}).")
        length = c.s("length_ok")
        if length.n and length.pct < MIN_LENGTH_OK_PCT:
            out.append(f"{c.label}: only {length.pct:.1f}% of outputs ({length.k}/{length.n}) keep to the length band.")
        uns = c.q("unsupported_number_share").mean
        if uns is not None and uns > UNSUPPORTED_NUMBER_SHARE_HIGH:
            out.append(
                f"{c.label}: {uns:.0%} of the numbers it writes are not in the fact sheet (mean over outputs) — "
                "check figures before publishing them."
            )
    refusals = [c for c in scored if c.s("refusal").n]
    if refusals:
        total = sum(c.s("refusal").n for c in refusals)
        refused = sum(c.s("refusal").k for c in refusals)
        who = ", ".join(f"{c.label} ({c.s('refusal').k})" for c in refusals if c.s("refusal").k)
        out.append(
            f"Refusals: {refused} of {total} scored outputs" + (f" — {who}." if who else " — none refused.")
        )
    lang = [c for c in scored if c.s("language_ok").n]
    off = [c for c in lang if c.s("language_ok").k < c.s("language_ok").n]
    if lang and off:
        out.append(
            "Language drift: "
            + ", ".join(f"{c.label} ({c.s('language_ok').n - c.s('language_ok').k} outputs)" for c in off)
            + "."
        )
    return out


def _quantization(scored: list[ConfigSummary]) -> list[str]:
    """Configurations of one model (family and size from the manifest) at different quantizations."""
    groups: dict[tuple, list[ConfigSummary]] = {}
    for c in scored:
        if c.family and c.params_b is not None and c.quant and c.mode == "plain":
            groups.setdefault((c.family, c.params_b), []).append(c)
    out = []
    for (family, params), members in groups.items():
        for a, b in combinations(sorted(members, key=lambda c: c.quant), 2):
            if a.quant == b.quant:
                continue
            ra, rb = a.q("rougeL").mean, b.q("rougeL").mean
            ta, tb = a.t("decode_tps").median, b.t("decode_tps").median
            if None in (ra, rb, ta, tb) or ta == 0:
                continue
            # Name the slower one first: its quality change is what the extra time buys.
            hi, lo = (b, a) if tb <= ta else (a, b)
            delta = hi.q("rougeL").mean - lo.q("rougeL").mean
            speed = lo.t("decode_tps").median / hi.t("decode_tps").median
            out.append(
                f"{family} {params:g}B: {hi.quant} vs {lo.quant} changes ROUGE-L by {delta:+.3f}, "
                f"while {lo.quant} decodes {speed:.2f}× as fast."
            )
    return out


def _size_vs_quality(scored: list[ConfigSummary]) -> list[str]:
    sized = [c for c in scored if c.params_b is not None and c.q("rougeL").mean is not None]
    if len(sized) < 2:
        return []
    largest = max(c.params_b for c in sized)
    big = [c for c in sized if c.params_b == largest]
    smaller = [c for c in sized if c.params_b < largest]
    if not smaller:
        return []
    best_small = max(smaller, key=lambda c: c.q("rougeL").mean)
    out = []
    for c in big:
        if c.q("rougeL").mean < best_small.q("rougeL").mean:
            out.append(
                f"Size did not buy quality: {c.label} ({c.params_b:g}B) scores ROUGE-L {c.q('rougeL').mean:.3f}, "
                f"below {best_small.label} ({best_small.params_b:g}B, {best_small.q('rougeL').mean:.3f})."
            )
    return out


def _run_health(run: RunSummary) -> list[str]:
    out = []
    for c in run.configs:
        crec = run.config_records.get(c.config_id)
        if c.device == "cpu":
            out.append(f"{c.label}: ran on the CPU; its timings are CPU timings, not GPU ones.")
        elif crec and crec.n_layers_total and crec.n_layers_offloaded is not None and crec.n_layers_offloaded < crec.n_layers_total:
            out.append(
                f"{c.label}: only {crec.n_layers_offloaded} of {crec.n_layers_total} layers ran on the GPU; "
                "its timings are not full-offload timings."
            )
        tps = c.t("decode_tps")
        if tps.n >= 5 and tps.p10 and tps.p90 / tps.p10 > TPS_SPREAD_RATIO:
            out.append(
                f"{c.label}: decode TPS is unsteady (p10–p90 {tps.p10:.1f}–{tps.p90:.1f} tok/s, n={tps.n}); "
                "check the telemetry for throttling or other load."
            )
        if c.truncated.n and c.truncated.pct >= TRUNCATED_HIGH_PCT:
            out.append(
                f"{c.label}: {c.truncated.pct:.0f}% of outputs ({c.truncated.k}/{c.truncated.n}) stopped at max_tokens, "
                "which caps their length and lowers their latency."
            )
    if run.failed:
        out.append(
            f"{len(run.failed)} configuration(s) failed: "
            + ", ".join(f"{r.config_id} at {r.stage}" for r in run.failed)
            + " (see Failed configurations)."
        )
    if run.not_run:
        out.append(f"{len(run.not_run)} configuration(s) in run.json were never attempted: {', '.join(run.not_run)}.")
    return out
