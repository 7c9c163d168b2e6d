"""What the user sees while `bench profile` runs, and the summary table at its end.

Progress: one bar over configurations, one over the current configuration's requests, with the
live decode speed (median so far, tokens/s) beside it. The summary is computed from the run
directory itself, so a resumed run's table covers every request recorded, not only this session's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import records
from bench.engine.orchestrator import Display
from bench.engine.stats import Spread, percentile, spread
from bench.rundir import RunDir

DASH = "—"


class RichDisplay(Display):
    def __init__(self, console: Console):
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._configs = None
        self._requests = None
        self._tps: list[float] = []

    def run_start(self, n_configs: int) -> None:
        self._progress.start()
        self._configs = self._progress.add_task("configurations", total=n_configs, status="")

    def config_start(self, index: int, config_id: str) -> None:
        self._tps = []
        if self._requests is not None:
            self._progress.remove_task(self._requests)
        self._requests = self._progress.add_task(f"  {config_id}", total=None, status="resolving model")

    def config_event(self, config_id: str, event: dict) -> None:
        kind = event.get("event")
        if self._requests is None:
            return
        if kind == "stage":
            self._progress.update(self._requests, status=_STAGE_TEXT.get(event.get("stage"), event.get("stage")))
        elif kind == "loaded":
            where = event.get("device")
            layers = f"{event.get('n_layers_offloaded')}/{event.get('n_layers_total')} layers on GPU"
            self.note(
                f"{config_id}: loaded in {event.get('load_time_s', 0):.2f} s on {where} ({layers}), "
                f"n_ctx {event.get('n_ctx')}, flash attention {_onoff(event.get('flash_attn'))}, "
                f"chat template {event.get('chat_template')}"
            )
        elif kind == "plan":
            self._progress.update(self._requests, total=event.get("total"), completed=0, status="generating")
        elif kind == "request":
            tps = event.get("decode_tps")
            if tps is not None:
                self._tps.append(tps)
            median = percentile(self._tps, 50)
            status = f"decode {median:.1f} tok/s (median, n={len(self._tps)})" if median is not None else ""
            self._progress.update(self._requests, completed=event.get("done"), total=event.get("total"),
                                  status=status)
        elif kind == "error":
            self._progress.update(self._requests, status=f"failed during {event.get('stage')}")

    def config_end(self, record: records.ConfigRecord) -> None:
        if self._configs is not None:
            self._progress.advance(self._configs)
        if record.status != "ok":
            self.note(failure_line(record))

    def note(self, text: str) -> None:
        self._progress.console.print(text, highlight=False)

    def run_end(self) -> None:
        self.stop()

    def stop(self) -> None:
        self._progress.stop()


def failure_line(record: records.ConfigRecord) -> str:
    """One console line (rich markup) for a failed configuration; its texts escaped, since an
    error message may hold [brackets] that rich would read as markup."""
    why = record.error or "unknown error"
    where = f"exit code {record.exit_code}" if record.exit_code is not None else (record.signal or "")
    return f"[red]{escape(record.config_id)}: failed during {record.stage}[/red] ({where}): {escape(why)}"


_STAGE_TEXT = {"load": "loading", "warmup": "warm-up", "generate": "generating", "unload": "unloading"}


def _onoff(value) -> str:
    return "on" if value else ("off" if value is False else "unknown")


# --------------------------------------------------------------------------- summary


def summary_rows(run: RunDir) -> list[dict]:
    """One row per configuration and mode: its latest status and the spread of its figures."""
    by_config: dict[str, list[records.RequestRecord]] = defaultdict(list)
    for r in run.requests():
        by_config[r.config_id].append(r)
    latest: dict[str, records.ConfigRecord] = {}
    for c in run.configs():
        latest[c.config_id] = c
    order = list(dict.fromkeys(list(latest) + list(by_config)))
    rows = []
    for config_id in order:
        reqs = by_config.get(config_id, [])
        modes = sorted({r.mode for r in reqs}, key=lambda m: (m != "plain", m)) or ["plain"]
        config = latest.get(config_id)
        for mode in modes:
            mine = [r for r in reqs if r.mode == mode]
            energy = [r.energy_per_token_j for r in mine]
            rows.append({
                "config_id": config_id,
                "mode": mode,
                "status": config.status if config else "not run",
                "device": config.device if config else None,
                "n_requests": len(mine),
                "decode_tps": spread([r.decode_tps for r in mine]),
                "ttft_ms": spread([r.ttft_ms for r in mine]),
                "latency_ms": spread([r.latency_ms for r in mine]),
                "energy_per_token_j": spread(energy),
            })
    return rows


def summary_table(rows: Iterable[dict]) -> Table:
    rows = list(rows)
    show_mode = any(r["mode"] != "plain" for r in rows)
    table = Table(title="bench profile: median per request, p10–p90 below it, over n requests")
    # Headers break into word and unit, and never below their longest word: a squeezed terminal
    # folds the configuration name instead of hiding a unit.
    table.add_column("configuration", overflow="fold", min_width=8)
    if show_mode:
        table.add_column("mode", min_width=11)
    table.add_column("status\ndevice", min_width=6)
    table.add_column("n", justify="right")
    table.add_column("decode\ntok/s", justify="right", min_width=9, no_wrap=True)
    table.add_column("TTFT\nms", justify="right", min_width=9, no_wrap=True)
    table.add_column("latency\nms", justify="right", min_width=9, no_wrap=True)
    table.add_column("energy\nJ/token", justify="right", min_width=7, no_wrap=True)
    for row in rows:
        cells = [row["config_id"]]
        if show_mode:
            cells.append(row["mode"])
        status = row["status"]
        colour = "green" if status == "ok" else "red"
        cells += [
            f"[{colour}]{status}[/{colour}]\n{row['device'] or DASH}",
            str(row["n_requests"]),
            _fmt(row["decode_tps"], 1),
            _fmt(row["ttft_ms"], 0),
            _fmt(row["latency_ms"], 0),
            _fmt(row["energy_per_token_j"], 4),
        ]
        table.add_row(*cells)
    return table


def _fmt(s: Spread, digits: int) -> str:
    if s.median is None:
        return DASH
    if s.n == 1:
        return f"{s.median:.{digits}f}"
    return f"{s.median:.{digits}f}\n[dim]{s.p10:.{digits}f}–{s.p90:.{digits}f}[/dim]"
