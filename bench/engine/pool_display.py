"""Progress for runs with several workers at once (`--gpus`, `--ray`): one row per worker.

A bar over configurations, then one row per GPU worker (or Ray task) with the configuration it
runs, its requests done and its live median decode speed. rich's Progress takes a lock on every
update, so rows are updated from the threads that follow each child.
"""

from __future__ import annotations

import threading

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import records
from bench.engine.orchestrator import Display
from bench.engine.progress import failure_line
from bench.engine.stats import percentile

_STAGE_TEXT = {"load": "loading", "warmup": "warm-up", "generate": "generating", "unload": "unloading"}


class PoolDisplay(Display):
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
        self._rows: dict[str, "RowDisplay"] = {}
        self._lock = threading.Lock()

    def run_start(self, n_configs: int) -> None:
        self._progress.start()
        self._configs = self._progress.add_task("configurations", total=n_configs, status="")

    def row(self, label: str) -> "RowDisplay":
        """The row of one worker (created on first use), e.g. "GPU 1" or a Ray task's label."""
        with self._lock:
            if label not in self._rows:
                task = self._progress.add_task(f"  {escape(label)}", total=None, status="idle")
                self._rows[label] = RowDisplay(self, label, task)
            return self._rows[label]

    def remove_row(self, label: str) -> None:
        with self._lock:
            row = self._rows.pop(label, None)
        if row is not None:
            self._progress.remove_task(row.task)

    def update(self, task, **fields) -> None:
        self._progress.update(task, **fields)

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


class RowDisplay(Display):
    """The Display one Orchestrator talks to: its events land on this worker's row."""

    def __init__(self, pool: PoolDisplay, label: str, task):
        self.pool = pool
        self.label = label
        self.task = task
        self._tps: list[float] = []

    def _title(self, config_id: str) -> str:
        return self.label if config_id in self.label else f"{self.label} · {config_id}"

    def config_start(self, index: int, config_id: str) -> None:
        self._tps = []
        self.pool.update(self.task, description=f"  {escape(self._title(config_id))}", total=None,
                         completed=0, status="resolving model")

    def config_event(self, config_id: str, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            stage = event.get("stage")
            self.pool.update(self.task, status=_STAGE_TEXT.get(stage, stage))
        elif kind == "loaded":
            self.pool.note(
                f"{escape(self._title(config_id))}: loaded in {event.get('load_time_s') or 0:.2f} s on "
                f"{event.get('device')} ({event.get('n_layers_offloaded')}/{event.get('n_layers_total')} layers on GPU)"
            )
        elif kind == "plan":
            self.pool.update(self.task, total=event.get("total"), completed=0, status="generating")
        elif kind == "request":
            tps = event.get("decode_tps")
            if tps is not None:
                self._tps.append(tps)
            median = percentile(self._tps, 50)
            status = f"decode {median:.1f} tok/s (median, n={len(self._tps)})" if median is not None else ""
            self.pool.update(self.task, completed=event.get("done"), total=event.get("total"), status=status)
        elif kind == "error":
            self.pool.update(self.task, status=f"failed during {event.get('stage')}")

    def status(self, text: str) -> None:
        self.pool.update(self.task, status=text)

    def config_end(self, record: records.ConfigRecord) -> None:
        self.pool.update(self.task, status="idle" if record.status == "ok" else f"{record.config_id} failed")

    def note(self, text: str) -> None:
        self.pool.note(text)
