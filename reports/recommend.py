"""Recommendations by use case, chosen from the numbers by rules the report prints.

The rules read a table of headline figures (one row per configuration: label, tier, params_b,
rougeL, factual, decode_tps, parse_pct, schema_pct, extraneous_pct, length_ok_pct, repetition,
twin, scored, status), so they apply alike to a run and to the study's published table.
No model is named here: every choice comes from the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

# Thresholds, printed with the rules so a reader can disagree with them.
MAX_REPETITION = 0.02
MIN_LENGTH_OK_PCT = 50.0
EDGE_MIN_LENGTH_OK_PCT = 70.0
EDGE_MAX_PARAMS_B = 4.0
THROUGHPUT_MIN_ROUGE_FRACTION = 0.75
SERVER_TEXT_ROUGE_MARGIN = 0.02
SERVER_JSON_SCHEMA_MARGIN_PCT = 5.0
SERVER_JSON_MAX_EXTRANEOUS_PCT = 10.0
AVOID_JSON_BELOW_PARSE_PCT = 60.0

NUMERIC = (
    "params_b",
    "rougeL",
    "factual",
    "decode_tps",
    "parse_pct",
    "schema_pct",
    "extraneous_pct",
    "length_ok_pct",
    "repetition",
)


@dataclass
class Recommendation:
    use_case: str
    rule: str
    choice: str | None  # a configuration label (or several, comma-separated, for the "avoid" rows)
    reason: str  # the figures behind the choice, or why nothing qualified


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    df = frame.copy()
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else math.nan
    for col, default in (("twin", False), ("scored", True), ("status", "ok"), ("tier", None)):
        if col not in df:
            df[col] = default
    df["size_class"] = [_size_class(t, p) for t, p in zip(df["tier"], df["params_b"])]
    df["avoid_reason"] = [_avoid_reason(r) for _, r in df.iterrows()]
    return df


def _size_class(tier, params_b) -> str | None:
    """'edge' or 'server' from the manifest's tier, else from the parameter count."""
    if isinstance(tier, str) and tier.strip():
        t = tier.strip().upper()
        if t == "A":
            return "edge"
        if t == "B":
            return "server"
    if params_b is not None and not (isinstance(params_b, float) and math.isnan(params_b)):
        return "edge" if params_b < EDGE_MAX_PARAMS_B else "server"
    return None


def _avoid_reason(row) -> str:
    reasons = []
    if _ok(row.get("repetition")) and row["repetition"] > MAX_REPETITION:
        reasons.append(f"repetition {row['repetition']:.3f} > {MAX_REPETITION}")
    if _ok(row.get("length_ok_pct")) and row["length_ok_pct"] < MIN_LENGTH_OK_PCT:
        reasons.append(f"length compliance {row['length_ok_pct']:.1f}% < {MIN_LENGTH_OK_PCT:.0f}%")
    return "; ".join(reasons)


def _ok(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _fmt(row, *cols) -> str:
    names = {
        "rougeL": ("ROUGE-L", "{:.3f}"),
        "factual": ("factual", "{:.3f}"),
        "decode_tps": ("TPS", "{:.1f}"),
        "parse_pct": ("strict parse", "{:.1f}%"),
        "schema_pct": ("schema", "{:.1f}%"),
        "extraneous_pct": ("extraneous", "{:.1f}%"),
        "length_ok_pct": ("length compliance", "{:.1f}%"),
        "repetition": ("repetition", "{:.3f}"),
    }
    parts = []
    for col in cols:
        label, fmt = names[col]
        if _ok(row.get(col)):
            parts.append(f"{label} {fmt.format(row[col])}")
    return ", ".join(parts)


def _best(df: pd.DataFrame, by: list[str]):
    df = df.dropna(subset=[by[0]])
    if df.empty:
        return None
    return df.sort_values(by, ascending=False, na_position="last", kind="mergesort").iloc[0]


def recommend(frame: pd.DataFrame) -> list[Recommendation]:
    df = _prepare(frame)
    usable = df[(~df["twin"].astype(bool)) & (df["scored"].astype(bool)) & (df["status"] != "failed")]
    fit = usable[usable["avoid_reason"] == ""]
    edge, server = fit[fit["size_class"] == "edge"], fit[fit["size_class"] == "server"]
    recs: list[Recommendation] = []

    def add(use_case, rule, row, cols, pool_desc):
        if row is None:
            recs.append(Recommendation(use_case, rule, None, f"no configuration qualifies ({pool_desc})"))
        else:
            recs.append(Recommendation(use_case, rule, row["label"], _fmt(row, *cols)))

    edge_text = edge[edge["length_ok_pct"].fillna(100) >= EDGE_MIN_LENGTH_OK_PCT]
    add(
        "Edge / mobile, text output",
        f"Edge configuration with length compliance ≥ {EDGE_MIN_LENGTH_OK_PCT:.0f}% and the highest ROUGE-L "
        "(ties: factual consistency).",
        _best(edge_text, ["rougeL", "factual", "decode_tps"]),
        ("rougeL", "factual", "decode_tps", "repetition"),
        "no scored edge configuration",
    )
    add(
        "Edge / mobile, JSON output",
        "Edge configuration with the highest schema compliance (ties: strict parse rate, then TPS).",
        _best(edge, ["schema_pct", "parse_pct", "decode_tps"]),
        ("schema_pct", "parse_pct", "decode_tps"),
        "no edge configuration with JSON scores",
    )
    best_rouge = fit["rougeL"].max()
    floor = THROUGHPUT_MIN_ROUGE_FRACTION * best_rouge if _ok(best_rouge) else math.nan
    add(
        "Max throughput, acceptable quality",
        f"Highest decode TPS among configurations with ROUGE-L ≥ {THROUGHPUT_MIN_ROUGE_FRACTION:.0%} of the "
        "best ROUGE-L" + (f" (≥ {floor:.3f})." if _ok(floor) else "."),
        _best(fit[fit["rougeL"] >= floor], ["decode_tps", "rougeL"]) if _ok(floor) else None,
        ("decode_tps", "rougeL"),
        "no ROUGE-L scores",
    )
    top_server = server["rougeL"].max()
    add(
        "Server-light, text quality priority",
        f"Among server configurations within {SERVER_TEXT_ROUGE_MARGIN} ROUGE-L of the best server "
        "configuration, the fastest.",
        _best(server[server["rougeL"] >= top_server - SERVER_TEXT_ROUGE_MARGIN], ["decode_tps", "rougeL"])
        if _ok(top_server)
        else None,
        ("rougeL", "factual", "decode_tps"),
        "no scored server configuration",
    )
    top_schema = server["schema_pct"].max()
    json_pool = server[server["schema_pct"] >= top_schema - SERVER_JSON_SCHEMA_MARGIN_PCT] if _ok(top_schema) else server.iloc[0:0]
    clean_pool = json_pool[json_pool["extraneous_pct"].fillna(0) <= SERVER_JSON_MAX_EXTRANEOUS_PCT]
    add(
        "Server-light, JSON reliability priority",
        f"Among server configurations within {SERVER_JSON_SCHEMA_MARGIN_PCT:.0f} points of the best schema "
        f"compliance and with extraneous output ≤ {SERVER_JSON_MAX_EXTRANEOUS_PCT:.0f}%, the fastest "
        "(the extraneous limit is dropped when nothing meets it).",
        _best(clean_pool if not clean_pool.empty else json_pool, ["decode_tps", "schema_pct"]),
        ("schema_pct", "parse_pct", "extraneous_pct", "decode_tps"),
        "no server configuration with JSON scores",
    )
    add(
        "Best overall quality (unconstrained)",
        "Highest ROUGE-L of all candidates (ties: factual consistency).",
        _best(fit, ["rougeL", "factual"]),
        ("rougeL", "factual", "decode_tps"),
        "no ROUGE-L scores",
    )

    bad_json = usable[usable["parse_pct"] < AVOID_JSON_BELOW_PARSE_PCT]
    recs.append(
        Recommendation(
            "Avoid for JSON pipelines",
            f"Strict JSON parse rate below {AVOID_JSON_BELOW_PARSE_PCT:.0f}%.",
            ", ".join(bad_json["label"]) or None,
            "; ".join(f"{r['label']}: {_fmt(r, 'parse_pct', 'schema_pct')}" for _, r in bad_json.iterrows())
            or "none",
        )
    )
    unfit = usable[usable["avoid_reason"] != ""]
    recs.append(
        Recommendation(
            "Avoid for any production use",
            f"Repetition above {MAX_REPETITION} or length compliance below {MIN_LENGTH_OK_PCT:.0f}%.",
            ", ".join(unfit["label"]) or None,
            "; ".join(f"{r['label']}: {r['avoid_reason']}" for _, r in unfit.iterrows()) or "none",
        )
    )
    return recs


def candidate_rule() -> str:
    """The rule every recommendation starts from, printed above the table."""
    return (
        f"Candidates: scored, not twins, not failed, repetition ≤ {MAX_REPETITION} and length compliance "
        f"≥ {MIN_LENGTH_OK_PCT:.0f}%. Edge = tier A (or under {EDGE_MAX_PARAMS_B:.0f} B parameters when the "
        "manifest gives no tier); server = tier B (or larger). Configurations with neither a tier nor a "
        "parameter count take part only in the rules that ignore size."
    )
