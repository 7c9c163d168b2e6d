"""`bench report`: every aggregate against figures worked out by hand from the synthetic run."""

from __future__ import annotations

import csv
import re

import pandas as pd
import pytest

from bench.cli import main
from reports import plots
from reports.aggregate import load_run, model_entries, run_label
from reports.document import Figure, Paragraph, Section, Skipped
from reports.findings import findings
from reports.recommend import recommend
from reports.render_html import render_html
from reports.render_md import md_text, render_md
from reports.report import SECTIONS, build_report
from reports.study import load_study
from reports.tables import failures, full_results
from test_report_synthetic_run import A1, A2, B1, FAILED, PAYLOAD, TWIN, build_run


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def summary(run_path):
    return load_run(run_path)


def by_id(summary, cid):
    (config,) = [c for c in summary.configs if c.config_id == cid]
    return config


def cli(argv) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code
    return 0


# ------------------------------------------------------------------ aggregates


def test_timing_is_median_with_p10_p90_and_n(summary):
    tps = by_id(summary, A1).t("decode_tps")  # 100, 110, …, 180, 400
    assert (tps.n, tps.median, tps.p10, tps.p90) == (10, 145.0, pytest.approx(109.0), pytest.approx(202.0))
    assert tps.mean == pytest.approx(166.0)
    latency = by_id(summary, A1).t("latency_ms")  # 1000, 1100, …, 1900
    assert latency.median == pytest.approx(1450.0)
    assert (latency.p10, latency.p90) == (pytest.approx(1090.0), pytest.approx(1810.0))
    assert by_id(summary, A1).t("ttft_ms").median == pytest.approx(222.5)
    assert by_id(summary, B1).t("decode_tps").median == pytest.approx(49.0)
    assert by_id(summary, A2).t("decode_tps").median == pytest.approx(72.5)


def test_energy_power_and_vram(summary):
    a1, a2, b1 = by_id(summary, A1), by_id(summary, A2), by_id(summary, B1)
    per_token = a1.t("energy_per_token_j")  # 0.10 … 0.19 J
    assert per_token.median == pytest.approx(0.145)
    assert (per_token.p10, per_token.p90) == (pytest.approx(0.109), pytest.approx(0.181))
    # Only energy_j was stored for A2: 0.2 J × 64 tokens / 64 tokens.
    assert a2.t("energy_per_token_j").median == pytest.approx(0.2)
    assert a1.t("power_mean_w").median == pytest.approx(204.5)
    assert b1.t("power_mean_w").median == pytest.approx(300.0)  # the sampler's ticks stand in
    assert a1.peak_vram_gib == pytest.approx(2.0)  # from configs.jsonl
    assert b1.peak_vram_gib == pytest.approx(5.0)  # the telemetry peak (3, 5, 4 GiB)


def test_quality_means_and_percentages(summary):
    a1 = by_id(summary, A1)
    assert a1.q("rougeL").mean == pytest.approx(0.40)
    assert a1.q("rougeL").n == 10
    parse, lenient, schema = a1.s("json_parse_strict"), a1.s("json_parse_lenient"), a1.s("schema_ok")
    assert (parse.k, parse.n, parse.pct) == (4, 5, pytest.approx(80.0))
    assert lenient.pct == pytest.approx(100.0)
    assert (schema.k, schema.n, schema.pct) == (1, 5, pytest.approx(20.0))
    assert a1.s("extraneous").pct == pytest.approx(20.0)
    assert a1.q("field_completeness").mean == pytest.approx(0.8)
    assert a1.q("key_accuracy").mean == pytest.approx(0.7)
    assert (a1.s("length_ok").k, a1.s("length_ok").n) == (9, 10)
    assert a1.q("unsupported_numbers").mean == pytest.approx(0.3)
    assert by_id(summary, B1).s("schema_ok").pct == pytest.approx(80.0)


def test_efficiency_is_tps_times_rouge_l(summary):
    assert by_id(summary, A1).efficiency == pytest.approx(145.0 * 0.40)
    assert by_id(summary, A2).efficiency == pytest.approx(72.5 * 0.45)
    assert by_id(summary, B1).efficiency == pytest.approx(49.0 * 0.50)
    assert by_id(summary, TWIN).efficiency is None


def test_twin_has_timing_but_no_quality(summary):
    twin = by_id(summary, TWIN)
    assert twin.twin and twin.t("decode_tps").median == pytest.approx(34.5)
    table = full_results(summary)
    row = next(r for r in table.rows if r[0].text == TWIN)
    cols = [c.key for c in table.columns]
    assert row[cols.index("decode_tps")].text == "34.5"
    for key in ("rouge1", "rougeL", "factual", "json_parse_pct", "schema_pct", "repetition"):
        assert row[cols.index(key)].text == "—", key


def test_failed_configuration_is_listed_with_stage_and_error(summary):
    assert [r.config_id for r in summary.failed] == [FAILED]
    table = failures(summary)
    (row,) = table.rows
    assert row[0].text == FAILED and row[1].text == "load"
    assert "out of memory" in row[2].text


def test_manifest_and_probe_read_from_either_layout():
    meta = {
        "probe": {"hostname": "boxB", "gpus": [{"name": "NVIDIA L4"}]},
        "models": {"m:1b-q4_K_M": {"tier": "A", "params_b": 1.0}},
    }
    assert run_label(meta) == "boxB · NVIDIA L4"
    assert model_entries(meta)["m:1b-q4_K_M"]["tier"] == "A"
    profile_layout = {
        "hardware": {"host": {"hostname": "boxC"}, "gpus": []},
        "configs": [{"config_id": "x", "entry": {"tier": "B", "params_b": 7}}],
    }
    assert run_label(profile_layout) == "boxC · no GPU found"
    assert model_entries(profile_layout)["x"]["params_b"] == 7


# ------------------------------------------------------------------ recommendations and findings


def test_recommendations_follow_the_stated_rules(summary):
    recs = {r.use_case: r for r in recommend(summary.frame())}
    assert recs["Edge / mobile, text output"].choice == A2  # highest edge ROUGE-L (0.45)
    assert recs["Edge / mobile, JSON output"].choice == A2  # schema 100%
    assert recs["Max throughput, acceptable quality"].choice == A1  # 0.40 ≥ 0.75 × 0.50, fastest
    assert recs["Best overall quality (unconstrained)"].choice == B1
    assert recs["Server-light, text quality priority"].choice == B1
    assert all(TWIN not in (r.choice or "") for r in recs.values())


def test_rules_applied_to_the_study_table_pick_what_the_study_picked():
    study = load_study().rename(
        columns={"model": "label", "tps": "decode_tps", "json_parse_pct": "parse_pct", "len_comply_pct": "length_ok_pct"}
    )
    recs = {r.use_case: r.choice for r in recommend(study)}
    assert recs["Max throughput, acceptable quality"] == "llama3.2:1b-q4_K_M"
    assert recs["Server-light, text quality priority"] == "mistral:7b-q4_K_M"
    assert recs["Server-light, JSON reliability priority"] == "llama3.1:8b-q4_K_M"
    assert recs["Best overall quality (unconstrained)"] == "mistral:7b-q8_0"
    assert recs["Edge / mobile, JSON output"] == "qwen2.5:1.5b-q8_0"
    assert "phi3.5:3.8b-q4_K_M" in recs["Avoid for any production use"]
    assert "smollm2:1.7b-q4_K_M" in recs["Avoid for JSON pipelines"]


def test_recommendations_without_tier_fall_back_to_parameter_count():
    frame = pd.DataFrame(
        [
            {"label": "small", "params_b": 1.5, "rougeL": 0.4, "decode_tps": 150, "schema_pct": 50, "parse_pct": 90},
            {"label": "large", "params_b": 8.0, "rougeL": 0.5, "decode_tps": 40, "schema_pct": 90, "parse_pct": 100},
        ]
    )
    recs = {r.use_case: r.choice for r in recommend(frame)}
    assert recs["Edge / mobile, text output"] == "small"
    assert recs["Server-light, JSON reliability priority"] == "large"


def test_findings_are_read_off_the_data(summary):
    text = "\n".join(findings(summary))
    assert f"{A1}: parse rate high but schema compliance low" in text
    assert "80.0%" in text and "20.0%" in text
    assert "alpha 1B: Q8_0 vs Q4_K_M" in text
    assert FAILED in text
    assert B1 not in [line.split(":")[0] for line in findings(summary) if "schema compliance low" in line]


# ------------------------------------------------------------------ plots


def test_every_plot_draws_a_png(summary):
    for draw in plots.REPORT_PLOTS:
        fig = draw(summary)
        assert isinstance(fig, Figure), (draw.__name__, getattr(fig, "reason", ""))
        assert fig.png.startswith(b"\x89PNG")


def test_plots_without_data_are_skipped_with_a_reason(tmp_path):
    bare = load_run(build_run(tmp_path, with_scores=False, with_energy=False))
    skipped = {draw.__name__: draw(bare) for draw in plots.REPORT_PLOTS}
    assert isinstance(skipped["energy"], Skipped) and "NVML" in skipped["energy"].reason
    assert isinstance(skipped["rouge_l"], Skipped) and "bench score" in skipped["rouge_l"].reason
    assert isinstance(skipped["tps_log"], Figure)  # timing needs no scores
    assert isinstance(skipped["itl_trace"], Figure)


# ------------------------------------------------------------------ rendering


def test_unscored_run_still_reports_timing_with_a_note(tmp_path):
    path = build_run(tmp_path, with_scores=False)
    text = render_md(build_report(load_run(path), with_plots=False))
    assert f"not scored: run bench score {path}" in text
    assert "145.0 (p10–p90 109.0–202.0, n=10)" in text


def test_markdown_escapes_text_and_fences_outputs(summary):
    assert md_text("a|b <script> &amp; x > y") == "a\\|b &lt;script> &amp;amp; x > y"
    text = render_md(build_report(summary, with_plots=False))
    assert "<script>" not in text.split("## Sample outputs")[0]
    # The output holds ``` itself, so its fence must be longer.
    assert "````text\n" + PAYLOAD + "\n````" in text


def test_html_is_self_contained_and_escapes_outputs(summary):
    page = render_html(build_report(summary))
    assert page.count("<script>") == 1  # the report's own sort script, nothing else
    assert "<script>document.title" not in page
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;" in page
    assert "<img src=x" not in page
    external = [m for m in re.findall(r'(?:src|href)="([^"]*)"', page) if not m.startswith(("data:", "#"))]
    assert external == []
    assert page.count('src="data:image/png;base64,') == len(plots.REPORT_PLOTS)
    assert "Content-Security-Policy" in page


def test_sections_come_from_a_list_of_builders(summary):
    extra = lambda ctx: Section("extra", "Cross-check", [Paragraph(f"{len(ctx.run.configs)} rows")])  # noqa: E731
    doc = build_report(summary, with_plots=False, sections=[*SECTIONS, extra])
    assert doc.sections[-1].title == "Cross-check"
    assert "## Cross-check\n\n4 rows" in render_md(doc)


def test_cli_writes_md_html_csv_and_plots(run_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["report", str(run_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("report.md", "report.html", "report_full_results.csv", "report_json_reliability.csv",
                 "report_efficiency.csv", "report_beyond_study.csv", "report_failed.csv"):
        assert (out / name).is_file(), name
        assert str(out / name) in printed
    assert len(list((out / "plots").glob("*.png"))) == len(plots.REPORT_PLOTS)
    with (out / "report_full_results.csv").open() as fh:
        rows = {r["config"]: r for r in csv.DictReader(fh)}
    assert float(rows[A1]["decode_tps"]) == 145.0
    assert float(rows[A1]["decode_tps_p10"]) == pytest.approx(109.0)
    assert float(rows[A1]["decode_tps_n"]) == 10
    assert float(rows[A1]["json_parse_pct"]) == 80.0 and rows[A1]["json_parse_pct_k"] == "4"
    assert rows[TWIN]["rougeL"] == "" and rows[TWIN]["rougeL_why_missing"] == "twin"
    with (out / "report_efficiency.csv").open() as fh:
        eff = {r["config"]: float(r["efficiency"] or "nan") for r in csv.DictReader(fh)}
    assert eff[A1] == pytest.approx(58.0)


def test_cli_one_format_and_default_out(run_path):
    assert cli(["report", str(run_path), "--format", "md", "--no-plots"]) == 0
    assert (run_path / "report" / "report.md").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as exc:
        main(["report", str(tmp_path / "missing")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    with pytest.raises(SystemExit) as exc:
        main(["report", str(build_run(tmp_path)), "--format", "pdf"])
    assert exc.value.code == 2
    assert "unknown report format pdf" in capsys.readouterr().err
