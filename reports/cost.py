"""What a task costs on the measured hardware, and when self-hosting beats a hosted API.

The arithmetic (every figure the cost tables print comes from the functions below):

- Dedicated GPU, one request at a time. A GPU rented at P USD/hour that processes requests back to back
  costs P × (sum of request latencies in hours) for a batch of tasks, so

      per task          = P × mean_latency_s / 3600
      per 1M tokens     = P / (tokens_per_s × 3600) × 1e6,  tokens_per_s = Σ generated tokens / Σ latency_s

  Latency is end to end (request start to last generated token), so prefill (TTFT) is included, and the
  token count is the generated tokens only: this is the "decode-inclusive" throughput a user pays for,
  lower than the decode TPS the other tables show. Both figures assume the GPU is kept busy: idle time
  is not charged here but is, in the break-even below.
- Throughput mode (records with extra["parallel"] = N > 1: N requests in flight together). The GPU is
  busy for the union of the requests' [t_start_unix, t_end_unix] intervals (busy_s), so

      per task          = P × busy_s / n_tasks / 3600
      per 1M tokens     = P / (aggregate tokens_per_s × 3600) × 1e6,  aggregate = Σ generated tokens / busy_s

  When N requests always run together this is P × mean_latency_s / N / 3600.
- Electricity (on-premises): energy cost = kWh price × energy_j / 3.6e6, with energy_j the request's measured
  GPU energy (NVML: the board only, not the CPU, memory, power supply or cooling). Per task: the mean over
  requests with energy measured. In throughput mode each request's window also holds the energy of the
  requests decoded beside it, so windows are not summed: a batch (extra["group"]) is charged the energy of a
  request whose window spans the whole batch, and per task = Σ batch energy / tasks. Without batch facts the
  single-stream energy per generated token × the tokens of a task stands in: an upper bound, since batching
  lowers the energy per token.
- Hosted API: c_api = (input_tokens × IN + output_tokens × OUT) / 1e6 per task, IN/OUT in USD per 1M tokens,
  with the mean prompt and generated token counts of the local model (an API's tokenizer counts differently).
- Break-even. A GPU rented 24 h/day costs 24 × P per day whatever it does; each task then costs only its
  electricity c_energy (0 without --kwh-price: a rental's power is in its price). Self-hosting is cheaper
  than the API above

      V* = 24 × P / (c_api − c_energy)  tasks per day,

  and never when c_api ≤ c_energy. One GPU can do at most capacity = 86400 / seconds_per_task tasks a day
  (seconds_per_task = mean latency single-stream, busy_s / n_tasks in throughput mode). When V* exceeds that
  capacity self-hosting is never cheaper at any volume: n GPUs cost n × 24 × P for n × capacity tasks, the
  same per-task cost as one GPU at full load, 24 × P / capacity + c_energy, which is then above c_api.
- Monthly saving at V tasks/day: n = ceil(V / capacity) GPUs, rented all day;
  saving = 30 × (V × c_api − (n × 24 × P + V × c_energy)) USD per 30-day month (negative: the API is cheaper).

A configuration is costed only when it completed and passed the quality gates the user set (schema compliance
of JSON outputs ≥ --min-schema %, mean ROUGE-L ≥ --min-rougeL): a cheap model that fails the task is not a
saving. Twins (random weights) keep their per-token figures, but their per-task figures are left out since
random weights do not write the model's output lengths.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import click

from bench import records
from bench.errors import BenchError
from reports.aggregate import ConfigSummary, RunSummary
from reports.document import DASH, Bullets, Cell, Column, Note, Paragraph, Section, Table, missing, sig_text
from reports.stats import EMPTY, Summary, summarize

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0
J_PER_KWH = 3.6e6
TOKENS_PER_M = 1e6
DAYS_PER_MONTH = 30
TASKS_PER_ROW = 1000  # the tables print USD per 1,000 tasks: per-task figures are fractions of a cent

SHIPPED_PRICES = "gpu_prices.toml"


class CostError(BenchError):
    """Cost options or a price table the user gave are unusable."""


# ------------------------------------------------------------------ the arithmetic


def cost_per_task_usd(gpu_usd_per_hour: float, seconds_per_task: float) -> float:
    """P × seconds per task / 3600: a GPU billed by the hour, busy only with this task for that long."""
    return gpu_usd_per_hour * seconds_per_task / SECONDS_PER_HOUR


def cost_per_mtok_usd(gpu_usd_per_hour: float, tokens_per_s: float) -> float:
    """P / (tokens_per_s × 3600) × 1e6: an hour's price over the tokens generated in that hour, per million."""
    return gpu_usd_per_hour / (tokens_per_s * SECONDS_PER_HOUR) * TOKENS_PER_M


def energy_cost_usd(kwh_usd: float, energy_j: float) -> float:
    """kWh price × energy_j / 3.6e6 (1 kWh = 3.6 MJ)."""
    return kwh_usd * energy_j / J_PER_KWH


def api_cost_per_task_usd(in_tokens: float, out_tokens: float, in_usd_per_mtok: float, out_usd_per_mtok: float) -> float:
    """(in_tokens × IN + out_tokens × OUT) / 1e6, prices in USD per million tokens."""
    return (in_tokens * in_usd_per_mtok + out_tokens * out_usd_per_mtok) / TOKENS_PER_M


def capacity_tasks_per_day(seconds_per_task: float) -> float:
    """86400 / seconds per task: what one GPU can do in a day, busy all day."""
    return SECONDS_PER_DAY / seconds_per_task


def break_even_tasks_per_day(gpu_usd_per_hour: float, api_usd_per_task: float, energy_usd_per_task: float = 0.0) -> float | None:
    """V* = 24 P / (c_api − c_energy); None when the API costs no more per task than the electricity."""
    margin = api_usd_per_task - energy_usd_per_task
    if margin <= 0:
        return None
    return 24.0 * gpu_usd_per_hour / margin


@dataclass(frozen=True)
class MonthlySaving:
    volume_tasks_per_day: float
    n_gpus: int
    self_hosted_usd: float  # per 30-day month: GPUs rented all day + electricity
    api_usd: float  # per 30-day month

    @property
    def saving_usd(self) -> float:
        return self.api_usd - self.self_hosted_usd


def monthly_saving(
    volume_tasks_per_day: float,
    gpu_usd_per_hour: float,
    capacity_per_day: float,
    api_usd_per_task: float,
    energy_usd_per_task: float = 0.0,
) -> MonthlySaving:
    """30 × (V × c_api − (ceil(V / capacity) × 24 P + V × c_energy))."""
    n_gpus = max(1, math.ceil(volume_tasks_per_day / capacity_per_day - 1e-9))
    self_daily = n_gpus * 24.0 * gpu_usd_per_hour + volume_tasks_per_day * energy_usd_per_task
    api_daily = volume_tasks_per_day * api_usd_per_task
    return MonthlySaving(volume_tasks_per_day, n_gpus, DAYS_PER_MONTH * self_daily, DAYS_PER_MONTH * api_daily)


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: how long the GPU had at least one request in flight."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted((s, e) for s, e in intervals if e >= s):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


# ------------------------------------------------------------------ options and prices


@dataclass(frozen=True)
class GpuPrice:
    usd_per_hour: float
    source: str  # where the price came from, printed beside every figure that uses it
    example: bool = False  # from the shipped table of example prices


@dataclass
class CostOptions:
    gpu_usd_per_hour: tuple[float, ...] = ()  # one for every run, or one per run in order
    gpu_prices_file: Path | None = None
    kwh_usd: float | None = None
    api_usd_per_mtok: tuple[float, float] | None = None  # (input, output)
    volume_tasks_per_day: float | None = None
    min_schema_pct: float | None = None
    min_rougeL: float | None = None

    def validate(self) -> "CostOptions":
        for value in self.gpu_usd_per_hour:
            _non_negative(value, "--gpu-price")
        if self.kwh_usd is not None:
            _non_negative(self.kwh_usd, "--kwh-price")
        if self.volume_tasks_per_day is not None and not (self.volume_tasks_per_day > 0 and math.isfinite(self.volume_tasks_per_day)):
            raise CostError(f"--volume must be a positive number of tasks per day, not {self.volume_tasks_per_day:g}")
        if self.min_schema_pct is not None and not 0 <= self.min_schema_pct <= 100:
            raise CostError(f"--min-schema is a percentage (0–100), not {self.min_schema_pct:g}")
        if self.min_rougeL is not None and not 0 <= self.min_rougeL <= 1:
            raise CostError(f"--min-rougeL is a ROUGE-L F1 between 0 and 1, not {self.min_rougeL:g}")
        if self.volume_tasks_per_day is not None and self.api_usd_per_mtok is None:
            raise CostError("--volume needs --api-price IN,OUT (the monthly saving is against a hosted API)")
        return self

    @property
    def gates(self) -> list[str]:
        out = []
        if self.min_schema_pct is not None:
            out.append(f"schema compliance ≥ {self.min_schema_pct:g}% of JSON outputs")
        if self.min_rougeL is not None:
            out.append(f"mean ROUGE-L ≥ {self.min_rougeL:g}")
        return out


def _non_negative(value: float, flag: str) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise CostError(f"{flag} must be a non-negative number, not {value:g}")


def parse_api_price(text: str | None) -> tuple[float, float] | None:
    """'3,15' -> (3.0, 15.0): USD per 1M input tokens, per 1M output tokens."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        values = (float(parts[0]), float(parts[1]))
    except ValueError:
        raise CostError(f"--api-price takes IN,OUT (USD per 1M input and output tokens), e.g. 0.15,0.60; not {text!r}") from None
    for value in values:
        _non_negative(value, "--api-price")
    return values


@dataclass(frozen=True)
class PriceEntry:
    name: str
    pattern: re.Pattern
    usd_per_hour: float
    source: str
    origin: str  # the file it came from


def load_price_table(path: Path | None = None) -> list[PriceEntry]:
    """The user's entries (if a file is given) before the shipped example entries."""
    entries: list[PriceEntry] = []
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CostError(f"--gpu-prices {path}: cannot read ({exc.strerror or exc})") from None
        entries += _parse_price_table(text, str(path))
    shipped = resources.files("reports").joinpath("data", SHIPPED_PRICES).read_text(encoding="utf-8")
    entries += _parse_price_table(shipped, f"reports/data/{SHIPPED_PRICES}")
    return entries


def _parse_price_table(text: str, origin: str) -> list[PriceEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CostError(f"{origin}: not valid TOML ({exc})") from None
    gpus = data.get("gpu", [])
    if not isinstance(gpus, list):
        raise CostError(f"{origin}: [[gpu]] entries expected")
    entries = []
    for i, item in enumerate(gpus, start=1):
        where = f"{origin}: [[gpu]] entry {i}"
        if not isinstance(item, dict):
            raise CostError(f"{where}: not a table")
        name, pattern, price = item.get("name"), item.get("match", item.get("name")), item.get("usd_per_hour")
        if not isinstance(name, str) or not name.strip():
            raise CostError(f"{where}: needs name = \"...\"")
        if not isinstance(pattern, str) or not pattern:
            raise CostError(f"{where} ({name}): match must be a regular expression string")
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
            raise CostError(f"{where} ({name}): usd_per_hour must be a non-negative number")
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise CostError(f"{where} ({name}): match {pattern!r} is not a valid regular expression ({exc})") from None
        source = item.get("source") if isinstance(item.get("source"), str) else ""
        entries.append(PriceEntry(name.strip(), compiled, float(price), source, origin))
    return entries


def gpu_name(meta: dict[str, Any]) -> str | None:
    """The first GPU's name from run.json's hardware probe ("hardware", as bench profile writes it, or "probe")."""
    for key in ("hardware", "probe"):
        probe = meta.get(key)
        if isinstance(probe, dict):
            gpus = probe.get("gpus")
            if isinstance(gpus, list) and gpus and isinstance(gpus[0], dict):
                name = gpus[0].get("name")
                if isinstance(name, str) and name.strip():
                    return name.strip()
    return None


def resolve_price(meta: dict[str, Any], options: CostOptions, index: int, n_runs: int, table: list[PriceEntry]) -> GpuPrice | None:
    """The price of run `index`: --gpu-price (one for all runs, or one per run), else the price table, else None."""
    given = options.gpu_usd_per_hour
    name = gpu_name(meta)
    if given:
        if len(given) not in (1, n_runs):
            raise CostError(
                f"--gpu-price given {len(given)} times for {n_runs} run(s): give one price for every run, "
                "or one per run in the order the runs are named"
            )
        value = given[0] if len(given) == 1 else given[index]
        what = f"GPU {name}" if name else "no GPU in this run: the host's price"
        return GpuPrice(value, f"--gpu-price {value:g} USD/h ({what})")
    if name is None:
        return None
    for entry in table:
        if entry.pattern.search(name):
            shipped = entry.origin.endswith(SHIPPED_PRICES) and entry.origin.startswith("reports/")
            detail = f"; {entry.source}" if entry.source else ""
            return GpuPrice(
                entry.usd_per_hour,
                f"{entry.origin} entry '{entry.name}' for {name}: {entry.usd_per_hour:g} USD/h{detail}",
                example=shipped,
            )
    return None


# ------------------------------------------------------------------ measured workloads


@dataclass
class Workload:
    """The requests one cost row is computed from."""

    n_tasks: int
    parallel: int  # 1: single-stream; N > 1: throughput mode with N requests in flight
    busy_s: float  # single-stream: Σ latency; throughput: the union of the request intervals
    gen_tokens: int  # Σ generated tokens
    latency_s: Summary  # per request
    prompt_tokens_mean: float
    gen_tokens_mean: float
    energy_j: Summary  # per request, over the requests with energy measured (single-stream only)
    energy_tokens: int  # generated tokens of the requests with energy measured
    n_truncated: int  # requests that stopped at max_tokens
    batch_energy_j: float | None = None  # throughput mode: Σ over batches of the energy of the whole batch
    n_batches: int = 0

    @property
    def seconds_per_task(self) -> float:
        return self.busy_s / self.n_tasks

    @property
    def tokens_per_s(self) -> float | None:
        return self.gen_tokens / self.busy_s if self.busy_s > 0 and self.gen_tokens > 0 else None

    @property
    def mode_label(self) -> str:
        return "single-stream" if self.parallel <= 1 else f"throughput ×{self.parallel}"


def parallel_of(rec: records.RequestRecord) -> int:
    value = rec.extra.get("parallel") if isinstance(rec.extra, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 1
    return max(1, int(value))


def batch_energy(recs: list[records.RequestRecord]) -> tuple[float, int] | None:
    """(Σ batch energy in J, number of batches) for throughput records, or None when it cannot be told.

    Requests decoded together (extra["group"]) each carry the GPU energy over their own window, which holds
    the other requests' energy too, so the windows must not be summed. A batch's energy is that of a request
    whose window spans the whole batch (all of a batch start together, so the longest one does).
    """
    groups: dict[Any, list[records.RequestRecord]] = {}
    for r in recs:
        group = r.extra.get("group") if isinstance(r.extra, dict) else None
        if group is None or isinstance(group, (dict, list)):
            return None
        groups.setdefault(group, []).append(r)
    total = 0.0
    for members in groups.values():
        start = min(r.t_start_unix for r in members)
        end = max(r.t_end_unix for r in members)
        slack = 0.005 + 0.01 * max(end - start, 0.0)  # stamps of one batch differ by scheduling noise
        spanning = [
            r.energy_j
            for r in members
            if isinstance(r.energy_j, (int, float)) and math.isfinite(r.energy_j)
            and r.t_start_unix <= start + slack and r.t_end_unix >= end - slack
        ]
        if not spanning:
            return None
        total += max(spanning)
    return total, len(groups)


def workload(recs: list[records.RequestRecord], parallel: int = 1) -> Workload | None:
    recs = [r for r in recs if isinstance(r.latency_ms, (int, float)) and r.latency_ms > 0]
    if not recs:
        return None
    if parallel > 1:
        busy = busy_seconds((r.t_start_unix, r.t_end_unix) for r in recs)
        if busy <= 0:  # no usable wall-clock stamps: assume the N requests always ran together
            busy = sum(r.latency_ms for r in recs) / 1000.0 / parallel
    else:
        busy = sum(r.latency_ms for r in recs) / 1000.0
    with_energy = [r for r in recs if isinstance(r.energy_j, (int, float)) and math.isfinite(r.energy_j)] if parallel <= 1 else []
    return Workload(
        n_tasks=len(recs),
        parallel=parallel,
        busy_s=busy,
        gen_tokens=sum(int(r.n_gen_tokens or 0) for r in recs),
        latency_s=summarize(r.latency_ms / 1000.0 for r in recs),
        prompt_tokens_mean=sum(r.n_prompt_tokens or 0 for r in recs) / len(recs),
        gen_tokens_mean=sum(r.n_gen_tokens or 0 for r in recs) / len(recs),
        energy_j=summarize(r.energy_j for r in with_energy) if with_energy else EMPTY,
        energy_tokens=sum(int(r.n_gen_tokens or 0) for r in with_energy),
        n_truncated=sum(1 for r in recs if r.finish_reason == "length"),
        **_batch_fields(recs if parallel > 1 else []),
    )


def _batch_fields(recs: list[records.RequestRecord]) -> dict[str, Any]:
    measured = batch_energy(recs) if recs else None
    return {"batch_energy_j": measured[0], "n_batches": measured[1]} if measured else {}


@dataclass
class CostRow:
    """One configuration (or one of its variants) in one serving mode, costed."""

    config: ConfigSummary
    variant: str  # "all" (the run's task mix) or a task variant
    work: Workload
    price: GpuPrice | None
    per_task_usd: float | None = None
    per_mtok_usd: float | None = None
    energy_per_task_usd: float | None = None
    energy_per_mtok_usd: float | None = None
    energy_upper_bound: bool = False  # throughput mode: single-stream J/token stands in
    api_per_task_usd: float | None = None
    capacity_per_day: float | None = None
    break_even_per_day: float | None = None
    never_breaks_even: bool = False  # c_api ≤ c_energy, or V* above one GPU's capacity
    saving: MonthlySaving | None = None
    per_task_shown: bool = True  # False for twins


def cost_row(c: ConfigSummary, variant: str, work: Workload, price: GpuPrice | None, options: CostOptions,
             energy_j_per_token: float | None = None) -> CostRow:
    row = CostRow(c, variant, work, price, per_task_shown=not c.twin)
    row.capacity_per_day = capacity_tasks_per_day(work.seconds_per_task) if work.seconds_per_task > 0 else None
    if price is not None:
        row.per_task_usd = cost_per_task_usd(price.usd_per_hour, work.seconds_per_task)
        if work.tokens_per_s:
            row.per_mtok_usd = cost_per_mtok_usd(price.usd_per_hour, work.tokens_per_s)
    if options.kwh_usd is not None:
        if work.parallel <= 1 and not work.energy_j.empty and work.energy_tokens:
            row.energy_per_task_usd = energy_cost_usd(options.kwh_usd, work.energy_j.mean)
            row.energy_per_mtok_usd = energy_cost_usd(options.kwh_usd, work.energy_j.mean * work.energy_j.n / work.energy_tokens) * TOKENS_PER_M
        elif work.parallel > 1 and work.batch_energy_j is not None and work.gen_tokens:
            row.energy_per_task_usd = energy_cost_usd(options.kwh_usd, work.batch_energy_j / work.n_tasks)
            row.energy_per_mtok_usd = energy_cost_usd(options.kwh_usd, work.batch_energy_j / work.gen_tokens) * TOKENS_PER_M
        elif work.parallel > 1 and energy_j_per_token is not None:
            row.energy_per_task_usd = energy_cost_usd(options.kwh_usd, energy_j_per_token * work.gen_tokens_mean)
            row.energy_per_mtok_usd = energy_cost_usd(options.kwh_usd, energy_j_per_token) * TOKENS_PER_M
            row.energy_upper_bound = True
    if options.api_usd_per_mtok is not None:
        row.api_per_task_usd = api_cost_per_task_usd(work.prompt_tokens_mean, work.gen_tokens_mean, *options.api_usd_per_mtok)
        if price is not None and row.capacity_per_day:
            energy = row.energy_per_task_usd or 0.0
            row.break_even_per_day = break_even_tasks_per_day(price.usd_per_hour, row.api_per_task_usd, energy)
            row.never_breaks_even = row.break_even_per_day is None or row.break_even_per_day > row.capacity_per_day
            if options.volume_tasks_per_day is not None:
                row.saving = monthly_saving(
                    options.volume_tasks_per_day, price.usd_per_hour, row.capacity_per_day, row.api_per_task_usd, energy
                )
    return row


def gate_failure(c: ConfigSummary, options: CostOptions) -> str | None:
    """Why a configuration gets no cost figures (None: it gets them)."""
    if c.status == "failed":
        return f"the configuration did not complete (failed at {c.stage or '?'}): its figures would rest on part of the task mix"
    if not options.gates:
        return None
    if c.twin:
        return "twin (random weights): no quality to check against the gates"
    reasons = []
    if options.min_schema_pct is not None:
        schema = c.s("schema_ok")
        if schema.pct is None:
            reasons.append("schema compliance not measured (no scored JSON output)")
        elif schema.pct < options.min_schema_pct:
            reasons.append(f"schema compliance {schema.pct:.1f}% ({schema.k}/{schema.n}) is below {options.min_schema_pct:g}%")
    if options.min_rougeL is not None:
        rouge = c.q("rougeL")
        if rouge.mean is None:
            reasons.append("ROUGE-L not measured (not scored)")
        elif rouge.mean < options.min_rougeL:
            reasons.append(f"mean ROUGE-L {rouge.mean:.3f} (n={rouge.n}) is below {options.min_rougeL:g}")
    return "; ".join(reasons) or None


@dataclass
class RunCost:
    run: RunSummary
    price: GpuPrice | None
    rows: list[CostRow] = field(default_factory=list)  # variant "all": single-stream and throughput rows
    variant_rows: list[CostRow] = field(default_factory=list)  # single-stream, per variant
    held_back: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)


def estimate(run: RunSummary, options: CostOptions, price: GpuPrice | None) -> RunCost:
    """Cost rows for every configuration of a run that completed and passed the gates."""
    out = RunCost(run, price)
    for c in run.configs:
        reason = gate_failure(c, options)
        if reason:
            out.held_back.append((c.label, reason))
            continue
        recs = [r for r in run.requests if r.config_id == c.config_id and r.mode == c.mode]
        by_parallel: dict[int, list[records.RequestRecord]] = {}
        for r in recs:
            by_parallel.setdefault(parallel_of(r), []).append(r)
        single = workload(by_parallel.get(1, []))
        j_per_token = None
        if single is not None and not single.energy_j.empty and single.energy_tokens:
            j_per_token = single.energy_j.mean * single.energy_j.n / single.energy_tokens
        for parallel in sorted(by_parallel):
            work = workload(by_parallel[parallel], parallel)
            if work is not None:
                out.rows.append(cost_row(c, "all", work, price, options, j_per_token))
        by_variant: dict[str, list[records.RequestRecord]] = {}
        for r in by_parallel.get(1, []):
            by_variant.setdefault(r.variant, []).append(r)
        for variant in sorted(by_variant, key=variant_order):
            work = workload(by_variant[variant])
            if work is not None:
                out.variant_rows.append(cost_row(c, variant, work, price, options))
    return out


def variant_order(variant: str) -> tuple:
    level, _, fmt = variant.partition("_")
    return ({"brief": 0, "mid": 1, "strong": 2}.get(level, 9), {"text": 0, "json": 1}.get(fmt, 9), variant)


# ------------------------------------------------------------------ cells and tables


def usd_text(value: float) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value >= 100:
        return f"{sign}${value:,.0f}"
    return f"{sign}${sig_text(value, 3)}"


def _tasks_text(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else sig_text(value, 3)


def _no_price() -> Cell:
    return missing("no GPU price (--gpu-price)")


def price_cell(price: GpuPrice | None, options: CostOptions) -> Cell:
    inputs = {
        "kwh_usd": options.kwh_usd,
        "api_in_usd_per_mtok": options.api_usd_per_mtok[0] if options.api_usd_per_mtok else None,
        "api_out_usd_per_mtok": options.api_usd_per_mtok[1] if options.api_usd_per_mtok else None,
        "volume_tasks_per_day": options.volume_tasks_per_day,
    }
    if price is None:
        return Cell(DASH, None, "no price", {"source": "", **inputs})
    return Cell(
        f"${price.usd_per_hour:g}",
        price.usd_per_hour,
        "example price" if price.example else "",
        {"source": price.source, **inputs},
    )


def per_mtok_cell(row: CostRow) -> Cell:
    if row.price is None:
        return _no_price()
    if row.per_mtok_usd is None:
        return missing("no generated tokens")
    w = row.work
    kind = "aggregate over GPU-busy time" if w.parallel > 1 else "end to end incl. prefill"
    return Cell(
        usd_text(row.per_mtok_usd),
        row.per_mtok_usd,
        f"{sig_text(w.tokens_per_s, 3)} tok/s {kind}; {w.gen_tokens:,} tokens, n={w.n_tasks}",
        {"tokens_per_s": w.tokens_per_s, "gen_tokens": w.gen_tokens, "n": w.n_tasks},
    )


def per_ktask_cell(row: CostRow) -> Cell:
    if not row.per_task_shown:
        return missing("twin: output lengths are not the model's")
    if row.price is None:
        return _no_price()
    w = row.work
    value = TASKS_PER_ROW * row.per_task_usd
    fields = {"seconds_per_task": w.seconds_per_task, "n": w.n_tasks, "truncated": w.n_truncated}
    trunc = f"; {w.n_truncated}/{w.n_tasks} hit max_tokens" if w.n_truncated else ""
    if w.parallel > 1:
        return Cell(
            usd_text(value),
            value,
            f"{sig_text(w.seconds_per_task, 3)} GPU-s/task: {w.n_tasks} tasks in {sig_text(w.busy_s, 3)} s busy{trunc}",
            fields,
        )
    lat = w.latency_s
    p10 = TASKS_PER_ROW * cost_per_task_usd(row.price.usd_per_hour, lat.p10)
    p90 = TASKS_PER_ROW * cost_per_task_usd(row.price.usd_per_hour, lat.p90)
    fields.update(p10=p10, p90=p90)
    spread = f"p10–p90 {usd_text(p10)}–{usd_text(p90)}, " if w.n_tasks > 1 else ""
    return Cell(
        usd_text(value),
        value,
        f"mean latency {sig_text(lat.mean, 3)} s; {spread}n={w.n_tasks}{trunc}",
        fields,
    )


def energy_cell(row: CostRow) -> Cell:
    if not row.per_task_shown:
        return missing("twin")
    if row.energy_per_task_usd is None:
        why = "no GPU energy measured" if row.work.parallel <= 1 else "no batch energy and no single-stream energy to stand in"
        return missing(why)
    value = TASKS_PER_ROW * row.energy_per_task_usd
    if row.energy_upper_bound:
        return Cell(usd_text(value), value, "upper bound: single-stream J/token", {"upper_bound": True})
    if row.work.parallel > 1:
        w = row.work
        per_task = w.batch_energy_j / w.n_tasks
        return Cell(
            usd_text(value),
            value,
            f"mean {sig_text(per_task, 3)} J/task: {sig_text(w.batch_energy_j, 3)} J over {w.n_batches} batch(es), n={w.n_tasks}",
            {"energy_j_mean": per_task, "n": w.n_tasks, "batches": w.n_batches},
        )
    e = row.work.energy_j
    return Cell(
        usd_text(value),
        value,
        f"mean {sig_text(e.mean, 3)} J/task, " + (f"p10–p90 {sig_text(e.p10, 3)}–{sig_text(e.p90, 3)} J, " if e.n > 1 else "") + f"n={e.n}",
        {"energy_j_mean": e.mean, "n": e.n},
    )


def api_cell(row: CostRow) -> Cell:
    if not row.per_task_shown:
        return missing("twin")
    w = row.work
    value = TASKS_PER_ROW * row.api_per_task_usd
    return Cell(
        usd_text(value),
        value,
        f"mean {w.prompt_tokens_mean:,.0f} in + {w.gen_tokens_mean:,.0f} out tokens, n={w.n_tasks}",
        {"in_tokens_mean": w.prompt_tokens_mean, "out_tokens_mean": w.gen_tokens_mean},
    )


def break_even_cell(row: CostRow) -> Cell:
    if not row.per_task_shown:
        return missing("twin")
    if row.price is None:
        return _no_price()
    cap = row.capacity_per_day
    fields = {"capacity_per_day": cap}
    if row.break_even_per_day is None:
        return Cell("never", None, "the API costs no more per task than the electricity", fields, flag="bad")
    value = row.break_even_per_day
    if value > cap:
        return Cell(
            _tasks_text(value),
            value,
            f"above one GPU's {_tasks_text(cap)}/day capacity: self-hosting is never cheaper",
            {**fields, "exceeds_capacity": True},
            flag="bad",
        )
    return Cell(_tasks_text(value), value, f"{value / cap:.1%} of one GPU's {_tasks_text(cap)}/day capacity", fields, flag="good")


def capacity_cell(row: CostRow) -> Cell:
    if not row.per_task_shown:
        return missing("twin")
    if not row.capacity_per_day:
        return missing("no latency")
    return Cell(_tasks_text(row.capacity_per_day), row.capacity_per_day, f"{sig_text(row.work.seconds_per_task, 3)} s/task")


def saving_cell(row: CostRow) -> Cell:
    if not row.per_task_shown:
        return missing("twin")
    if row.price is None:
        return _no_price()
    s = row.saving
    return Cell(
        usd_text(s.saving_usd),
        s.saving_usd,
        f"{s.n_gpus} GPU(s) {usd_text(s.self_hosted_usd)} vs API {usd_text(s.api_usd)} per 30 days",
        {"n_gpus": s.n_gpus, "self_hosted_usd": s.self_hosted_usd, "api_usd": s.api_usd},
        flag="good" if s.saving_usd > 0 else "bad",
    )


def _columns_and_cells(options: CostOptions, per_variant: bool):
    """(Column, cell maker) pairs for the options given: columns without an input are left out."""
    out = [
        (Column("usd_per_mtok", "USD per 1M tokens", "P / (generated tokens per second end to end × 3600) × 1e6"), per_mtok_cell),
        (Column("usd_per_1k_tasks", "USD per 1,000 tasks", "1000 × P × seconds per task / 3600"), per_ktask_cell),
    ]
    if options.kwh_usd is not None:
        out.append((Column("energy_usd_per_1k_tasks", "Electricity USD per 1,000 tasks", "1000 × kWh price × GPU energy_j / 3.6e6"), energy_cell))
    if options.api_usd_per_mtok is not None:
        out.append((Column("api_usd_per_1k_tasks", "API USD per 1,000 tasks", "1000 × (in tokens × IN + out tokens × OUT) / 1e6"), api_cell))
        out.append((Column("break_even_tasks_per_day", "Break-even (tasks/day)", "24 P / (c_api − c_energy)"), break_even_cell))
    if not per_variant:
        out.append((Column("capacity_tasks_per_day", "Capacity (tasks/day/GPU)", "86400 / seconds per task"), capacity_cell))
        if options.volume_tasks_per_day is not None and options.api_usd_per_mtok is not None:
            out.append(
                (
                    Column(
                        "monthly_saving_usd",
                        f"Saving at {options.volume_tasks_per_day:,.0f} tasks/day (USD/month)",
                        "30 × (V × c_api − (ceil(V / capacity) × 24 P + V × c_energy))",
                    ),
                    saving_cell,
                )
            )
    return out


def cost_table(key: str, title: str, rows: list[CostRow], options: CostOptions, *, per_variant: bool,
               run_cells: list[Cell] | None = None, run_column: Column | None = None) -> Table:
    makers = _columns_and_cells(options, per_variant)
    columns = [Column("config", "Configuration")]
    if run_column is not None:
        columns.append(run_column)
    columns.append(Column("variant", "Variant") if per_variant else Column("serving", "Serving", "single-stream or N requests in flight"))
    columns.append(Column("gpu_usd_per_hour", "GPU price (USD/h)", "the price every figure in the row uses; source in the inputs"))
    columns += [col for col, _ in makers]
    table_rows = []
    for i, row in enumerate(rows):
        cells = [Cell(row.config.label, row.config.label, "twin" if row.config.twin else "")]
        if run_cells is not None:
            cells.append(run_cells[i])
        cells.append(Cell(row.variant, row.variant) if per_variant else Cell(row.work.mode_label, row.work.parallel))
        cells.append(price_cell(row.price, options))
        cells += [make(row) for _, make in makers]
        table_rows.append(cells)
    return Table(key, title, columns, table_rows)


def inputs_bullets(options: CostOptions, prices: list[tuple[str, GpuPrice | None]]) -> Bullets:
    items = []
    for label, price in prices:
        items.append(f"GPU price{(' of ' + label) if label else ''}: " + (price.source if price else "none (pass --gpu-price USD_PER_HOUR)"))
    items.append(
        f"Electricity: {options.kwh_usd:g} USD/kWh applied to the measured GPU energy (board only)"
        if options.kwh_usd is not None
        else "Electricity: not charged (pass --kwh-price USD_PER_KWH for on-premises hosts)"
    )
    if options.api_usd_per_mtok is not None:
        i, o = options.api_usd_per_mtok
        items.append(f"Hosted API: {i:g} USD per 1M input tokens, {o:g} USD per 1M output tokens (token counts of the local model)")
    if options.volume_tasks_per_day is not None:
        items.append(f"Volume: {options.volume_tasks_per_day:,.0f} tasks/day; month = {DAYS_PER_MONTH} days; GPUs rented 24 h/day")
    items.append("Quality gates: " + ("; ".join(options.gates) if options.gates else "none set (--min-schema PCT, --min-rougeL X)"))
    return Bullets(items)


METHOD = [
    "USD per 1M tokens = P / (tokens/s × 3600) × 1e6, tokens/s = generated tokens / end-to-end latency "
    "(prefill included); throughput mode: aggregate tokens / GPU-busy time.",
    "USD per task = P × seconds per task / 3600: a fully used GPU (mean latency single-stream; busy time / "
    "tasks with N requests in flight). Idle time is not charged here; the break-even charges 24 h/day.",
    "Electricity per task = kWh price × mean GPU energy (J) / 3.6e6.",
    "Break-even V* = 24 P / (c_api − c_energy) tasks/day; above one GPU's capacity (86400 / seconds per task) "
    "self-hosting is never cheaper, at any number of GPUs.",
    "Monthly saving = 30 × (V × c_api − (ceil(V / capacity) × 24 P + V × c_energy)).",
]


def _has_any(options: CostOptions) -> bool:
    return bool(options.gpu_usd_per_hour or options.kwh_usd is not None or options.api_usd_per_mtok is not None)


def run_cost_section(run: RunSummary, options: CostOptions) -> Section:
    """The cost section of `bench report`."""
    options.validate()
    table = load_price_table(options.gpu_prices_file)
    price = resolve_price(run.meta, options, 0, 1, table)
    title = "Cost per task"
    if price is None and not _has_any(options):
        name = gpu_name(run.meta)
        why = f"GPU '{name}' is not in the price table" if name else "this run has no GPU"
        return Section(
            "cost",
            title,
            [Note(f"No cost figures: {why}. Pass --gpu-price USD_PER_HOUR (and --kwh-price, --api-price IN,OUT, "
                  "--volume TASKS_PER_DAY) for cost per task, per 1M tokens and the break-even against an API.")],
        )
    cost = estimate(run, options, price)
    blocks: list = [inputs_bullets(options, [("", price)])]
    if price is not None and price.example:
        blocks.append(Note("The GPU price is an example from the shipped table, not a quote: pass --gpu-price or "
                           "--gpu-prices FILE with your own.", "warn"))
    if cost.rows:
        blocks.append(cost_table("cost", "Cost by configuration (this run's task mix)", cost.rows, options, per_variant=False))
    if cost.variant_rows:
        blocks.append(cost_table("cost_by_variant", "Cost by task variant (single-stream)", cost.variant_rows, options, per_variant=True))
    if cost.held_back:
        blocks.append(Paragraph("No cost figures for these configurations:"))
        blocks.append(Bullets([f"{label}: {reason}" for label, reason in cost.held_back]))
    if not cost.rows and not cost.held_back:
        blocks.append(Note("No timed requests to cost.", "warn"))
    blocks += [Paragraph("How the cost figures are computed (reports/cost.py defines each):"), Bullets(METHOD)]
    return Section("cost", title, blocks)


def report_builder(options: CostOptions):
    """A section builder for reports.report's SECTIONS: (ReportContext) -> Section."""

    def cost(ctx) -> Section:
        return run_cost_section(ctx.run, options)

    return cost


def with_cost_section(sections: list, options: CostOptions) -> list:
    """SECTIONS with the cost section after the recommendations (or before the method, or last)."""
    builders = list(sections)
    names = [getattr(b, "__name__", "") for b in builders]
    builder = report_builder(options)
    if "recommendations" in names:
        builders.insert(names.index("recommendations") + 1, builder)
    elif "method_section" in names:
        builders.insert(names.index("method_section"), builder)
    else:
        builders.append(builder)
    return builders


def compare_cost_section(runs: list[RunSummary], options: CostOptions) -> Section | None:
    """The cost section of `bench compare`: every configuration on every run, each run at its own GPU price."""
    options.validate()
    table = load_price_table(options.gpu_prices_file)
    labels = [f"{r.host_label} ({r.path.name})" for r in runs]
    prices = [resolve_price(r.meta, options, i, len(runs), table) for i, r in enumerate(runs)]
    if all(p is None for p in prices) and not _has_any(options):
        return Section("cost", "Cost per task", [Note(
            "No cost figures: no run's GPU is in the price table. Pass --gpu-price USD_PER_HOUR (once for every "
            "run, or once per run in order) for cost per task and per 1M tokens on each machine.")])
    costs = [estimate(r, options, p) for r, p in zip(runs, prices)]
    order: list[tuple[str, str]] = []
    for cost in costs:
        for row in cost.rows:
            key = (row.config.label, row.work.mode_label)
            if key not in order:
                order.append(key)
    rows, run_cells = [], []
    for key in order:
        group = [(i, row) for i, cost in enumerate(costs) for row in cost.rows if (row.config.label, row.work.mode_label) == key]
        cheapest = min((row.per_task_usd for _, row in group if row.per_task_usd is not None and row.per_task_shown), default=None)
        for i, row in group:
            flag = "good" if cheapest is not None and row.per_task_usd == cheapest and len(group) > 1 else ""
            run_cells.append(Cell(labels[i], labels[i], "cheapest" if flag else "", flag=flag))
            rows.append(row)
    blocks: list = [inputs_bullets(options, list(zip(labels, prices)))]
    if any(p is not None and p.example for p in prices):
        blocks.append(Note("Some GPU prices are examples from the shipped table, not quotes: pass --gpu-price "
                           "(once per run) or --gpu-prices FILE with your own.", "warn"))
    if rows:
        blocks.append(cost_table("cost", "Cost by configuration and machine (each run's task mix)", rows, options,
                                 per_variant=False, run_cells=run_cells, run_column=Column("machine", "Machine")))
    held = [f"{labels[i]}: {label}: {reason}" for i, cost in enumerate(costs) for label, reason in cost.held_back]
    if held:
        blocks.append(Paragraph("No cost figures for these configurations:"))
        blocks.append(Bullets(held))
    blocks += [Paragraph("How the cost figures are computed (reports/cost.py defines each):"), Bullets(METHOD)]
    return Section("cost", "Cost per task", blocks)


# ------------------------------------------------------------------ command-line options


def cost_options(func):
    """Add the cost options to a click command; the command receives them as `cost: CostOptions`."""

    @functools.wraps(func)
    def wrapper(*args, gpu_price, gpu_prices, kwh_price, api_price, volume, min_schema, min_rougel, **kwargs):
        kwargs["cost"] = CostOptions(
            gpu_usd_per_hour=tuple(gpu_price),
            gpu_prices_file=gpu_prices,
            kwh_usd=kwh_price,
            api_usd_per_mtok=parse_api_price(api_price),
            volume_tasks_per_day=volume,
            min_schema_pct=min_schema,
            min_rougeL=min_rougel,
        ).validate()
        return func(*args, **kwargs)

    decorators = [
        click.option("--gpu-price", "gpu_price", type=float, multiple=True, metavar="USD_PER_HOUR",
                     help="GPU price in USD per hour (compare: once for all runs, or once per run in order). "
                          "Default: the run's GPU in the price table."),
        click.option("--gpu-prices", "gpu_prices", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     metavar="FILE", help="TOML table of GPU prices searched before the shipped examples "
                                          "(reports/data/gpu_prices.toml)."),
        click.option("--kwh-price", "kwh_price", type=float, default=None, metavar="USD_PER_KWH",
                     help="Electricity price, charged on the measured GPU energy (on-premises hosts)."),
        click.option("--api-price", "api_price", default=None, metavar="IN,OUT",
                     help="Hosted API price in USD per 1M input and output tokens: adds the break-even volume."),
        click.option("--volume", "volume", type=float, default=None, metavar="TASKS_PER_DAY",
                     help="Tasks per day for the monthly saving against --api-price."),
        click.option("--min-schema", "min_schema", type=float, default=None, metavar="PCT",
                     help="Cost only configurations whose JSON outputs pass the schema at least PCT% of the time."),
        click.option("--min-rougeL", "min_rougel", type=float, default=None, metavar="X",
                     help="Cost only configurations with mean ROUGE-L at least X."),
    ]
    for decorate in reversed(decorators):
        wrapper = decorate(wrapper)
    return wrapper
