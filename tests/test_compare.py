"""`bench compare`: bootstrap ratios that cover the truth, output agreement, the study reference."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from bench.cli import main
from bench.errors import BenchError
from reports.aggregate import load_run
from reports.compare import compare_runs, output_agreement, ratio_ci
from reports.render_md import render_md
from reports.stats import bootstrap_ratio
from reports.study import HARDWARE_NOTE, compare_with_study, load_study
from test_report_synthetic_run import A1, A2, B1, TWIN, build_run


def cli(argv) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code
    return 0


def by_id(summary, cid):
    (config,) = [c for c in summary.configs if c.config_id == cid]
    return config


# ------------------------------------------------------------------ the bootstrap itself


def test_ratio_of_medians_covers_a_known_ratio():
    rng = np.random.default_rng(7)
    a = rng.lognormal(3.0, 0.4, 200)
    b = 1.5 * rng.lognormal(3.0, 0.4, 200)
    ci = bootstrap_ratio(a, b)
    assert ci.low < 1.5 < ci.high
    assert ci.significant  # and the interval is far from 1
    assert ci.ratio == pytest.approx(np.median(b) / np.median(a))
    assert ci.resamples == 2000 and ci.level == 0.95


def test_equal_distributions_are_not_significant():
    rng = np.random.default_rng(11)
    a, b = rng.lognormal(3.0, 0.4, 200), rng.lognormal(3.0, 0.4, 200)
    ci = bootstrap_ratio(a, b)
    assert ci.low < 1.0 < ci.high
    assert ci.significant is False


def test_interval_coverage_is_close_to_95_percent():
    """Over 100 independent data sets the 95% interval should hold the true ratio about 95 times."""
    hits = false_alarms = 0
    for i in range(100):
        rng = np.random.default_rng(1000 + i)
        a = rng.lognormal(3.0, 0.4, 60)
        ci = bootstrap_ratio(a, 1.5 * rng.lognormal(3.0, 0.4, 60))
        hits += ci.low <= 1.5 <= ci.high
        false_alarms += bool(bootstrap_ratio(a, rng.lognormal(3.0, 0.4, 60)).significant)
    assert hits >= 88
    assert false_alarms <= 12


def test_fixed_seed_gives_the_same_interval():
    rng = np.random.default_rng(3)
    a, b = rng.normal(10, 1, 50), rng.normal(12, 1, 50)
    assert bootstrap_ratio(a, b) == bootstrap_ratio(a, b)


def test_missing_figures_give_no_ratio():
    ci = bootstrap_ratio([None, None], [1.0, 2.0])
    assert ci.ratio is None and ci.significant is None


# ------------------------------------------------------------------ two runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    a = build_run(base, host="boxA", gpu="NVIDIA H100 80GB HBM3")
    b = build_run(
        base,
        host="boxB",
        gpu="NVIDIA L4",
        tps_scale=1.5,
        changed_output=(A2, "i2/brief_text"),
    )
    return a, b


def test_timing_ratios_with_intervals(runs):
    base, other = load_run(runs[0]), load_run(runs[1])
    a1, o1 = by_id(base, A1), by_id(other, A1)
    tps = ratio_ci(base, other, a1, o1, "decode_tps")
    assert tps.ratio == pytest.approx(1.5)
    assert tps.low <= 1.5 <= tps.high and tps.significant
    ttft = ratio_ci(base, other, a1, o1, "ttft_ms")
    assert ttft.ratio == pytest.approx(1 / 1.5) and ttft.significant
    energy = ratio_ci(base, other, a1, o1, "energy_per_token_j")  # the same energy figures in both runs
    assert energy.ratio == pytest.approx(1.0) and energy.significant is False


def test_outputs_that_differ_are_flagged(runs):
    base, other = load_run(runs[0]), load_run(runs[1])
    changed = output_agreement(base, other, by_id(base, A2), by_id(other, A2))
    assert (changed.comparable, changed.differing) == (10, 1) and changed.differ
    same = output_agreement(base, other, by_id(base, B1), by_id(other, B1))
    assert same.comparable == 10 and not same.differ


def test_flash_attention_difference_is_named_as_a_cause(tmp_path):
    a = load_run(build_run(tmp_path, flash_attn=True))
    b = load_run(build_run(tmp_path, flash_attn=False, changed_output=(B1, "i1/brief_json")))
    agree = output_agreement(a, b, by_id(a, B1), by_id(b, B1))
    assert agree.differ and agree.causes == ["flash attention on vs off"]


def test_compare_document_labels_runs_by_host_and_gpu(runs):
    doc = compare_runs([load_run(p) for p in runs])
    text = render_md(doc)
    assert "boxA · NVIDIA H100 80GB HBM3" in text and "boxB · NVIDIA L4" in text
    assert "1.500×" in text and "significant" in text
    timing = next(t for t in doc.tables() if t.key.startswith("timing_ratios"))
    row = next(r for r in timing.rows if r[0].text == A1)
    assert row[1].fields["significant"] is True and row[1].flag == "good"
    quality = next(t for t in doc.tables() if t.key.startswith("quality_deltas"))
    flags = {r[0].text: r[-1].text for r in quality.rows}
    assert flags[A2] == "outputs differ" and flags[B1] == "identical"
    twin_row = next(r for r in quality.rows if r[0].text == TWIN)
    assert twin_row[1].text == "—"


def test_same_host_runs_get_told_apart(tmp_path):
    a, b = build_run(tmp_path), build_run(tmp_path)
    text = render_md(compare_runs([load_run(a), load_run(b)]))
    assert f"hostA · NVIDIA H100 80GB HBM3 ({a.name})" in text
    assert f"hostA · NVIDIA H100 80GB HBM3 ({b.name})" in text


def test_cli_compare_writes_all_formats(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli(["compare", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("compare.md", "compare.html", "compare_runs.csv", "compare_timing_ratios_1.csv", "compare_quality_deltas_1.csv"):
        assert (out / name).is_file() and str(out / name) in printed, name
    with (out / "compare_timing_ratios_1.csv").open() as fh:
        rows = {r["config"]: r for r in csv.DictReader(fh)}
    assert float(rows[A1]["decode_tps_ratio"]) == pytest.approx(1.5)
    low, high = float(rows[A1]["decode_tps_ratio_low"]), float(rows[A1]["decode_tps_ratio_high"])
    assert low <= 1.5 <= high
    assert rows[A1]["decode_tps_ratio_significant"] == "True"


def test_cli_compare_needs_two_runs(runs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(runs[0])])
    assert exc.value.code == 2
    assert "two or more runs" in capsys.readouterr().err


# ------------------------------------------------------------------ the study as reference


STUDY_IDS = {A1: "llama3.2:1b-q4_K_M", A2: "llama3.2:1b-q8_0", B1: "mistral:7b-q4_K_M"}


def test_shipped_study_tables_load():
    study = load_study()
    assert len(study) == 22
    row = study.set_index("model").loc["llama3.2:1b-q4_K_M"]
    assert (row["tps"], row["rougeL"], row["key_accuracy"]) == (226.5, 0.390, 0.652)


def test_compare_with_study_gives_delta_and_ratio(tmp_path):
    run = load_run(build_run(tmp_path, rename=STUDY_IDS))
    doc = compare_with_study([run])
    detail = next(t for t in doc.tables() if t.key == "study_detail")
    cells = {(r[0].text, r[1].text): r for r in detail.rows}
    rouge = cells["llama3.2:1b-q4_K_M", "ROUGE-L"]
    assert rouge[2].value == pytest.approx(0.40) and rouge[3].value == pytest.approx(0.390)
    assert rouge[4].value == pytest.approx(0.010) and rouge[5].value == pytest.approx(0.40 / 0.390)
    tps = cells["llama3.2:1b-q4_K_M", "TPS (tok/s)"]  # our mean 166 (the study printed averages)
    assert tps[2].value == pytest.approx(166.0) and tps[5].value == pytest.approx(166.0 / 226.5)
    schema = cells["mistral:7b-q4_K_M", "Schema %"]
    assert schema[4].value == pytest.approx(80.0 - 39.1)
    text = render_md(doc)
    assert "did not disclose its hardware" in text and "Ollama" in text
    assert HARDWARE_NOTE.split(",")[0] in text
    assert "Not in the study: gamma:14b-q4_K_M~twin" in text


def test_cli_compare_reference_study(tmp_path, capsys):
    path = build_run(tmp_path, rename=STUDY_IDS)
    assert cli(["compare", str(path), "--reference", "study", "--format", "csv,md"]) == 0
    out = path / "compare-study"
    assert (out / "compare_study.md").is_file() and (out / "compare_study_study_summary.csv").is_file()
    assert not (out / "compare_study.html").exists()


def test_study_reference_with_no_matching_configuration_is_an_error(tmp_path):
    with pytest.raises(BenchError, match="none of its configurations is in the study"):
        compare_with_study([load_run(build_run(tmp_path))])
