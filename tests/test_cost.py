"""Cost per task and per token, break-even against a hosted API, quality gates and the price table.

The run below is small enough to work every figure out by hand (P = 3.6 USD/h, i.e. 0.001 USD per second):

  good:1b single-stream  latencies 1, 2, 3, 2 s (mean 2 s, Σ 8 s); 100, 200, 300, 200 tokens (Σ 800: 100 tok/s);
                         500 prompt tokens each; energy 100, 200, 300, 200 J (mean 200 J, 1 J/token)
      -> per task 3.6 × 2 / 3600 = 0.002 USD (2.0 per 1,000); per 1M tokens 3.6 / (100 × 3600) × 1e6 = 10 USD
      -> at 0.18 USD/kWh: 0.18 × 200 / 3.6e6 = 1e-5 USD per task (0.01 per 1,000)
      -> API 3/15 USD per 1M: (500 × 3 + 200 × 15) / 1e6 = 0.0045 per task; V* = 86.4 / (0.0045 − 0.00001)
         = 19,242.76 tasks/day; capacity 86400 / 2 = 43,200 tasks/day
      -> API 1/4: c_api = 0.0013; V* = 86.4 / 0.00129 = 66,976.7 > 43,200: never cheaper
  good:1b throughput ×4  two batches of four, intervals [0,3] [0,4] [0,4] [0,2] and [10,12] [10,13] [10,13] [10,11]:
                         busy 4 + 3 = 7 s for 8 tasks of 100 tokens -> 0.875 s/task, 0.875 USD per 1,000,
                         3.6 × 7 / 800 / 3600 × 1e6 = 8.75 USD per 1M tokens, capacity 98,742.9 tasks/day;
                         energy 100 J per second of each window: batches 400 J + 300 J = 87.5 J/task
  bad:1b                 schema 1/4 (25%), ROUGE-L 0.2: held back by --min-schema 50 / --min-rougeL 0.3
  twin:7b~twin           timing only
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from bench import records
from bench.rundir import RunDir, new_run_dir
from reports import cost
from reports.aggregate import load_run

P = 3.6
GOOD, BAD, TWIN = "good:1b", "bad:1b", "twin:7b~twin"


def _request(config_id, j, *, latency_s, n_gen, energy_j=None, parallel=None, t_start=None, variant="brief_json", twin=False,
             group=None):
    t0 = 1_700_000_000.0 + (t_start if t_start is not None else 100 * j)
    return records.RequestRecord(
        config_id=config_id, rep=0, request_id=f"i{j}/{variant}", item_id=f"i{j}", variant=variant,
        level=variant.split("_")[0], format=variant.split("_")[1], mode="plain", twin=twin,
        n_prompt_tokens=500, n_gen_tokens=n_gen, finish_reason="stop", output="{}",
        ttft_ms=100.0, latency_ms=latency_s * 1000.0, prefill_tps=5000.0, decode_tps=n_gen / latency_s,
        itl_p50_ms=10.0, itl_p90_ms=12.0, itl_p99_ms=15.0, token_times_ms=[100.0], seed=1, temperature=0.0,
        max_tokens=512, t_start_unix=t0, t_end_unix=t0 + latency_s, energy_j=energy_j,
        extra=({"parallel": parallel} if parallel else {}) | ({"group": group} if group is not None else {}),
    )


def build_cost_run(base: Path, gpu: str | None = "NVIDIA H100 80GB HBM3", batch_groups: bool = True) -> Path:
    path = new_run_dir(base)
    run = RunDir(path)
    run.write_meta({
        "status": "completed",
        "hardware": {"gpus": [{"index": 0, "name": gpu}] if gpu else []},
        "configs": [{"config_id": c, "entry": {"id": c}} for c in (GOOD, BAD, TWIN)],
    })
    variants = ["brief_text", "brief_json", "brief_text", "brief_json"]
    for j, (lat, n, e) in enumerate(zip((1, 2, 3, 2), (100, 200, 300, 200), (100.0, 200.0, 300.0, 200.0))):
        rec = _request(GOOD, j, latency_s=lat, n_gen=n, energy_j=e, variant=variants[j])
        run.append(records.REQUESTS_FILE, rec)
        _score(run, rec, schema_ok=True, rouge=0.5)
    # Each request's energy window holds its batch-mates' energy too (100 J per second of batch): the batch
    # costs what its longest window measured, 400 J + 300 J = 700 J for 8 tasks (87.5 J/task), not Σ = 2,200 J.
    batches = [(0.0, (3, 4, 4, 2)), (10.0, (2, 3, 3, 1))]
    j = 10
    for group, (start, lats) in enumerate(batches):
        for lat in lats:
            rec = _request(GOOD, j, latency_s=lat, n_gen=100, energy_j=100.0 * lat, parallel=4, t_start=start,
                           group=group if batch_groups else None)
            rec.rep = 1  # a different key from the single-stream requests
            run.append(records.REQUESTS_FILE, rec)
            j += 1
    for j in range(4):
        rec = _request(BAD, j, latency_s=0.5, n_gen=100, energy_j=50.0)
        run.append(records.REQUESTS_FILE, rec)
        _score(run, rec, schema_ok=j == 0, rouge=0.2)
    for j in range(4):
        run.append(records.REQUESTS_FILE, _request(TWIN, j, latency_s=4, n_gen=400, twin=True))
    for cid in (GOOD, BAD, TWIN):
        run.append(records.CONFIGS_FILE, records.ConfigRecord(config_id=cid, status="ok", stage="done", n_requests=4, twin=cid == TWIN))
    return path


def _score(run, rec, *, schema_ok, rouge):
    json_variant = rec.variant.endswith("_json")
    run.append(records.SCORES_FILE, records.ScoreRecord(
        key=rec.key, config_id=rec.config_id, request_id=rec.request_id, item_id=rec.item_id, variant=rec.variant,
        mode=rec.mode, rep=rec.rep, metrics={"rougeL": rouge, "schema_ok": schema_ok if json_variant else None},
    ))


@pytest.fixture
def run_path(tmp_path):
    return build_cost_run(tmp_path / "runs")


# ------------------------------------------------------------------ the arithmetic


def test_arithmetic_on_hand_checked_figures():
    assert cost.cost_per_task_usd(P, 2.0) == pytest.approx(0.002)
    assert cost.cost_per_mtok_usd(P, 100.0) == pytest.approx(10.0)
    assert cost.energy_cost_usd(0.18, 200.0) == pytest.approx(1e-5)
    assert cost.api_cost_per_task_usd(500, 200, 3.0, 15.0) == pytest.approx(0.0045)
    assert cost.capacity_tasks_per_day(2.0) == 43200
    assert cost.break_even_tasks_per_day(P, 0.0045, 1e-5) == pytest.approx(86.4 / 0.00449)
    assert cost.break_even_tasks_per_day(P, 0.0045) == pytest.approx(19200.0)
    # An API cheaper per task than the electricity never breaks even.
    assert cost.break_even_tasks_per_day(P, 1e-5, 1e-5) is None
    assert cost.break_even_tasks_per_day(P, 1e-6, 1e-5) is None


def test_monthly_saving_counts_whole_gpus_rented_all_day():
    one = cost.monthly_saving(30000, P, 43200, 0.0045, 1e-5)
    assert one.n_gpus == 1
    assert one.self_hosted_usd == pytest.approx(30 * (86.4 + 0.3))
    assert one.api_usd == pytest.approx(4050.0)
    assert one.saving_usd == pytest.approx(1449.0)
    two = cost.monthly_saving(50000, P, 43200, 0.0045, 1e-5)
    assert two.n_gpus == 2 and two.saving_usd == pytest.approx(6750.0 - 30 * (172.8 + 0.5))
    exact = cost.monthly_saving(43200, P, 43200, 0.0045)
    assert exact.n_gpus == 1  # a GPU at exactly its capacity is one GPU, not two


def test_busy_seconds_is_the_union_of_intervals():
    assert cost.busy_seconds([(0, 3), (0, 4), (0, 4), (0, 2), (10, 12), (10, 13)]) == 7
    assert cost.busy_seconds([(0, 1), (1, 2), (5, 6)]) == 3  # touching intervals join
    assert cost.busy_seconds([(2, 5), (0, 1)]) == 4  # order does not matter
    assert cost.busy_seconds([]) == 0


# ------------------------------------------------------------------ a run, costed


def _rows(run_path, **options):
    run = load_run(run_path)
    opts = cost.CostOptions(**options).validate()
    price = cost.GpuPrice(P, "test")
    return cost.estimate(run, opts, price)


def test_single_stream_and_throughput_rows(run_path):
    result = _rows(run_path, kwh_usd=0.18, api_usd_per_mtok=(3.0, 15.0), volume_tasks_per_day=30000)
    good = {r.work.mode_label: r for r in result.rows if r.config.config_id == GOOD}
    single, batch = good["single-stream"], good["throughput ×4"]
    assert single.work.n_tasks == 4 and single.work.seconds_per_task == pytest.approx(2.0)
    assert single.per_task_usd == pytest.approx(0.002)
    assert single.per_mtok_usd == pytest.approx(10.0)
    assert single.energy_per_task_usd == pytest.approx(1e-5)
    assert single.energy_per_mtok_usd == pytest.approx(0.18 * 1 / 3.6e6 * 1e6)  # 1 J/token
    assert single.api_per_task_usd == pytest.approx(0.0045)
    assert single.capacity_per_day == pytest.approx(43200)
    assert single.break_even_per_day == pytest.approx(86.4 / 0.00449)
    assert not single.never_breaks_even
    assert single.saving.saving_usd == pytest.approx(1449.0)

    assert batch.work.n_tasks == 8 and batch.work.busy_s == pytest.approx(7.0)
    assert batch.per_task_usd * 1000 == pytest.approx(0.875)
    assert batch.per_mtok_usd == pytest.approx(8.75)
    assert batch.capacity_per_day == pytest.approx(86400 / 0.875)
    # Overlapping windows are not summed: each batch is charged its spanning window (400 J + 300 J).
    assert not batch.energy_upper_bound
    assert batch.work.batch_energy_j == pytest.approx(700.0) and batch.work.n_batches == 2
    assert batch.energy_per_task_usd == pytest.approx(0.18 * 87.5 / 3.6e6)
    assert batch.energy_per_mtok_usd == pytest.approx(0.18 * (700 / 800) / 3.6e6 * 1e6)


def test_throughput_energy_without_batch_facts_is_an_upper_bound(tmp_path):
    path = build_cost_run(tmp_path / "runs", batch_groups=False)
    result = cost.estimate(load_run(path), cost.CostOptions(kwh_usd=0.18), cost.GpuPrice(P, "test"))
    batch = next(r for r in result.rows if r.config.config_id == GOOD and r.work.parallel == 4)
    # single-stream: 800 J over 800 tokens = 1 J/token; a throughput task has 100 tokens.
    assert batch.energy_upper_bound
    assert batch.energy_per_task_usd == pytest.approx(0.18 * 100 / 3.6e6)
    assert "upper bound" in cost.energy_cell(batch).detail


def test_break_even_beyond_one_gpu_capacity_is_flagged(run_path):
    result = _rows(run_path, kwh_usd=0.18, api_usd_per_mtok=(1.0, 4.0))
    single = next(r for r in result.rows if r.config.config_id == GOOD and r.work.parallel == 1)
    assert single.api_per_task_usd == pytest.approx(0.0013)
    assert single.break_even_per_day == pytest.approx(86.4 / 0.00129)
    assert single.break_even_per_day > single.capacity_per_day
    assert single.never_breaks_even
    cell = cost.break_even_cell(single)
    assert "never cheaper" in cell.detail and cell.fields["exceeds_capacity"] is True


def test_per_variant_rows_are_single_stream_only(run_path):
    result = _rows(run_path)
    good = {r.variant: r for r in result.variant_rows if r.config.config_id == GOOD}
    assert set(good) == {"brief_text", "brief_json"}
    # brief_text: latencies 1 and 3 s (mean 2 s), 100 + 300 tokens; brief_json: 2 and 2 s, 200 + 200 tokens.
    assert good["brief_text"].per_task_usd == pytest.approx(0.002)
    assert good["brief_text"].per_mtok_usd == pytest.approx(P * 4 / 400 / 3600 * 1e6)
    assert good["brief_json"].work.n_tasks == 2


def test_quality_gates_hold_back_failing_and_unscored_configurations(run_path):
    ungated = _rows(run_path)
    assert {r.config.config_id for r in ungated.rows} == {GOOD, BAD, TWIN}
    gated = _rows(run_path, min_schema_pct=50.0, min_rougeL=0.3)
    assert {r.config.config_id for r in gated.rows} == {GOOD}
    held = dict(gated.held_back)
    assert "schema compliance 25.0% (1/4) is below 50%" in held[BAD]
    assert "ROUGE-L 0.200" in held[BAD]
    assert "twin" in held[TWIN]


def test_twins_get_per_token_but_no_per_task_figures(run_path):
    result = _rows(run_path, api_usd_per_mtok=(3.0, 15.0))
    twin = next(r for r in result.rows if r.config.config_id == TWIN)
    assert twin.per_mtok_usd == pytest.approx(P / 100 / 3600 * 1e6)  # 400 tokens in 4 s
    assert cost.per_mtok_cell(twin).value == pytest.approx(10.0)
    assert cost.per_ktask_cell(twin).value is None
    assert cost.break_even_cell(twin).value is None


# ------------------------------------------------------------------ prices


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NVIDIA H100 80GB HBM3", "H100 80GB"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
        ("NVIDIA A100-SXM4-40GB", None),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("Tesla T4", "T4"),
        ("NVIDIA GeForce RTX 3060", None),
    ],
)
def test_shipped_price_table_matches_gpu_names(name, expected):
    table = cost.load_price_table()
    meta = {"probe": {"gpus": [{"name": name}]}}
    price = cost.resolve_price(meta, cost.CostOptions(), 0, 1, table)
    if expected is None:
        assert price is None
    else:
        assert f"entry '{expected}'" in price.source and price.example and price.usd_per_hour > 0


def test_user_price_file_comes_first_and_gpu_price_overrides_all(tmp_path):
    user = tmp_path / "prices.toml"
    user.write_text('[[gpu]]\nname = "Our H100"\nmatch = "H100"\nusd_per_hour = 1.25\nsource = "our contract, 2026"\n')
    meta = {"hardware": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}}
    price = cost.resolve_price(meta, cost.CostOptions(), 0, 1, cost.load_price_table(user))
    assert price.usd_per_hour == 1.25 and "our contract" in price.source and not price.example
    given = cost.resolve_price(meta, cost.CostOptions(gpu_usd_per_hour=(4.0,)), 0, 1, cost.load_price_table(user))
    assert given.usd_per_hour == 4.0 and "--gpu-price" in given.source
    # One --gpu-price per run in compare; a count that fits neither is refused.
    per_run = cost.CostOptions(gpu_usd_per_hour=(1.0, 2.0))
    assert cost.resolve_price(meta, per_run, 1, 2, []).usd_per_hour == 2.0
    with pytest.raises(cost.CostError, match="--gpu-price given 2 times for 3 run"):
        cost.resolve_price(meta, per_run, 0, 3, [])


def test_bad_price_file_and_options_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[gpu]]\nname = "X"\nmatch = "("\nusd_per_hour = 1\n')
    with pytest.raises(cost.CostError, match="not a valid regular expression"):
        cost.load_price_table(bad)
    bad.write_text('[[gpu]]\nname = "X"\nusd_per_hour = "cheap"\n')
    with pytest.raises(cost.CostError, match="usd_per_hour must be a non-negative number"):
        cost.load_price_table(bad)
    with pytest.raises(cost.CostError, match="IN,OUT"):
        cost.parse_api_price("3")
    with pytest.raises(cost.CostError, match="--volume needs --api-price"):
        cost.CostOptions(volume_tasks_per_day=10).validate()
    with pytest.raises(cost.CostError, match="percentage"):
        cost.CostOptions(min_schema_pct=150).validate()


# ------------------------------------------------------------------ through the CLI


def _bench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd)


def test_report_shows_the_cost_tables_with_their_inputs(run_path, tmp_path):
    out = tmp_path / "out"
    result = _bench(
        "report", str(run_path), "--format", "md,csv", "--no-plots", "--out", str(out),
        "--gpu-price", "3.6", "--kwh-price", "0.18", "--api-price", "3,15", "--volume", "30000", "--min-schema", "50",
    )
    assert result.returncode == 0, result.stderr
    md = (out / "report.md").read_text()
    section = md[md.index("## Cost per task"):]
    assert "--gpu-price 3.6 USD/h (GPU NVIDIA H100 80GB HBM3)" in section
    assert "0.18 USD/kWh" in section and "3 USD per 1M input tokens, 15 USD per 1M output tokens" in section
    assert "schema compliance ≥ 50% of JSON outputs" in section
    assert "bad:1b: schema compliance 25.0% (1/4) is below 50%" in section
    good_line = next(line for line in section.splitlines() if line.startswith("| good:1b | single-stream"))
    assert "$10.0" in good_line and "$2.00" in good_line and "19,243" in good_line and "$1,449" in good_line
    with (out / "report_cost.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    good = next(r for r in rows if r["config"] == GOOD and r["serving"] == "1")
    assert float(good["usd_per_mtok"]) == pytest.approx(10.0)
    assert float(good["usd_per_1k_tasks"]) == pytest.approx(2.0)
    assert float(good["gpu_usd_per_hour"]) == 3.6 and float(good["gpu_usd_per_hour_kwh_usd"]) == 0.18
    assert "--gpu-price" in good["gpu_usd_per_hour_source"]
    assert float(good["monthly_saving_usd"]) == pytest.approx(1449.0)
    assert not any(r["config"] == BAD for r in rows)
    assert (out / "report_cost_by_variant.csv").exists()


def test_report_without_a_price_says_how_to_get_one(tmp_path):
    path = build_cost_run(tmp_path / "runs", gpu=None)
    out = tmp_path / "out"
    result = _bench("report", str(path), "--format", "md", "--no-plots", "--out", str(out))
    assert result.returncode == 0, result.stderr
    md = (out / "report.md").read_text()
    assert "No cost figures: this run has no GPU" in md and "--gpu-price" in md


def test_compare_prices_each_run_and_marks_the_cheapest(tmp_path):
    a = build_cost_run(tmp_path / "runs", gpu="NVIDIA H100 80GB HBM3")
    b = build_cost_run(tmp_path / "runs", gpu="NVIDIA L4")
    out = tmp_path / "cmp"
    result = _bench("compare", str(a), str(b), "--format", "md,csv", "--out", str(out), "--gpu-price", "3.6", "--gpu-price", "0.9")
    assert result.returncode == 0, result.stderr
    with (out / "compare_cost.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["config"] == GOOD and r["serving"] == "1"]
    assert [float(r["gpu_usd_per_hour"]) for r in rows] == [3.6, 0.9]
    assert [float(r["usd_per_1k_tasks"]) for r in rows] == pytest.approx([2.0, 0.5])
    md = (out / "compare.md").read_text()
    assert "## Cost per task" in md and "cheapest" in md


@pytest.mark.parametrize(
    "args, message",
    [
        (["--api-price", "x"], "error: --api-price takes IN,OUT"),
        (["--gpu-price", "-1"], "error: --gpu-price must be a non-negative number"),
        (["--volume", "100"], "error: --volume needs --api-price"),
        (["--gpu-prices", "/nonexistent/prices.toml"], "error: --gpu-prices /nonexistent/prices.toml: cannot read"),
    ],
)
def test_bad_cost_options_exit_with_one_line(run_path, tmp_path, args, message):
    result = _bench("report", str(run_path), "--format", "md", "--no-plots", "--out", str(tmp_path / "o"), *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_cost_section_sits_after_the_recommendations_and_uses_the_example_price(run_path):
    from reports.report import SECTIONS, build_report

    sections = cost.with_cost_section(SECTIONS, cost.CostOptions())
    names = [getattr(b, "__name__", "") for b in sections]
    assert names.index("cost") == names.index("recommendations") + 1
    doc = build_report(load_run(run_path), with_plots=False, sections=sections)
    section = next(s for s in doc.sections if s.key == "cost")
    text = " ".join(getattr(b, "text", "") for b in section.blocks)
    assert "example from the shipped table, not a quote" in text
    table = next(b for b in section.blocks if getattr(b, "key", "") == "cost")
    price = table.rows[0][2]
    shipped = next(e for e in cost.load_price_table() if e.name == "H100 80GB")
    assert price.value == shipped.usd_per_hour and "entry 'H100 80GB'" in price.fields["source"]
