"""`bench crosscheck RUN_DIR --ollama [URL] | --openai URL`: the run's requests again, on a server.

For every configuration of the run, the server is made to serve the same GGUF (Ollama: created from
the local file; `--pull` uses Ollama's own tag instead), then gets the run's exact prompts, raw, with
matched options (temperature, seed, max tokens, an explicit context size), streamed and timed here.
Records go to RUN_DIR/crosscheck/<label>.jsonl as they arrive; the comparison table is printed at
the end and written to RUN_DIR/crosscheck/report.md. Without a server option it reprints the table.

Exit status: 0 when every configuration was cross-checked, 1 when any failed (each says why in one
line; the others still ran), 2 for bad input.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from bench.crosscheck.ollama_client import DEFAULT_KEEP_ALIVE, DEFAULT_URL
from bench.crosscheck.openai_client import SCHEMA_FIELDS
from bench.crosscheck.records import CrosscheckRecord, check_label
from bench.crosscheck.runner import ConfigOutcome, Display


@click.command("crosscheck")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--ollama", "ollama_url", is_flag=False, flag_value=DEFAULT_URL, default=None, metavar="[URL]",
              help=f"Cross-check against Ollama (default URL {DEFAULT_URL}). Put it after RUN_DIR.")
@click.option("--openai", "openai_url", metavar="URL",
              help="Cross-check against an OpenAI-compatible server (llama-server, llama-cpp-python, vLLM).")
@click.option("--pull", is_flag=True,
              help="Ollama: pull the manifest's ollama_tag instead of creating a model from the run's own GGUF.")
@click.option("--config", "config_ids", multiple=True, metavar="ID",
              help="Only this configuration of the run (repeatable; default: all).")
@click.option("--label", help="Name of this cross-check's files, crosscheck/<label>.jsonl (default: ollama / openai).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=300.0, show_default=True,
              help="Seconds one request (or a model create/pull step without progress) may take.")
@click.option("--limit", type=click.IntRange(1), help="At most this many requests per configuration (a quick check).")
@click.option("--openai-model", help="The model name to ask an OpenAI-compatible server for (default: the one it lists).")
@click.option("--openai-schema-field", type=click.Choice(SCHEMA_FIELDS), default="json_schema", show_default=True,
              help="How constrained runs pass the JSON schema: json_schema (llama-server), grammar "
                   "(llama-cpp-python, GBNF), response_format, guided_json (vLLM).")
@click.option("--keep-alive", default=DEFAULT_KEEP_ALIVE, show_default=True,
              help="Ollama keep_alive for the model between requests.")
@click.option("--no-flush", is_flag=True,
              help="Do not send the untimed cache-flush request before each timed one (prompt caching then shows "
                   "up as flags).")
@click.option("--no-warmup", is_flag=True, help="Skip the untimed warm-up request per configuration.")
@click.pass_context
def command(ctx, run_dir, ollama_url, openai_url, pull, config_ids, label, timeout_s, limit, openai_model,
            openai_schema_field, keep_alive, no_flush, no_warmup):
    """Repeat a run's requests on Ollama or an OpenAI-compatible server and compare speed and outputs."""
    from bench.crosscheck.plan import plan_run
    from bench.crosscheck.runner import RunOptions, run_crosscheck
    from bench.rundir import RunDir

    console = Console(highlight=False, soft_wrap=True)
    run = RunDir.open(run_dir)
    if pull and not ollama_url:
        raise click.UsageError("--pull applies to --ollama")
    if (openai_model or ctx.get_parameter_source("openai_schema_field") == click.core.ParameterSource.COMMANDLINE) \
            and not openai_url:
        raise click.UsageError("--openai-model and --openai-schema-field apply to --openai")
    if label and ollama_url and openai_url:
        raise click.UsageError("--label names one cross-check; give --ollama and --openai in separate runs to label them")
    if label:
        check_label(label)
    if not ollama_url and not openai_url:
        from bench.crosscheck.records import read_crosschecks

        if not read_crosschecks(run.path):
            raise click.UsageError("give --ollama [URL] or --openai URL (this run has no cross-check to show yet)")
        _finish(console, run.path)
        ctx.exit(0)

    plan = plan_run(run.path, config_ids, limit)
    if openai_url and len(plan.configs) > 1:
        raise click.UsageError(
            f"the run has {len(plan.configs)} configurations and an OpenAI-compatible server serves one model: "
            "name its configuration with --config"
        )
    for note in plan.notes:
        console.print(f"note: {escape(note)}")

    clients = []
    if ollama_url:
        from bench.crosscheck.ollama_client import OllamaClient

        clients.append((OllamaClient(ollama_url, timeout_s=timeout_s, pull=pull, keep_alive=keep_alive),
                        label or "ollama", {"pull": pull, "keep_alive": keep_alive}))
    if openai_url:
        from bench.crosscheck.openai_client import OpenAIClient

        clients.append((OpenAIClient(openai_url, timeout_s=timeout_s, model=openai_model,
                                     schema_field=openai_schema_field),
                        label or "openai", {"schema_field": openai_schema_field}))

    failed: list[tuple[str, ConfigOutcome]] = []
    for client, name, extra in clients:
        console.print(f"cross-checking {escape(str(run.path))} against {client.kind} at {escape(client.url)} "
                      f"(label {escape(name)})")
        options = RunOptions(label=name, timeout_s=timeout_s, flush_cache=not no_flush, warmup=not no_warmup,
                             extra=extra)
        display = RichDisplay(console)
        try:
            outcomes = run_crosscheck(plan, client, options, display)
        finally:
            display.stop()
            client.close()
        failed += [(name, o) for o in outcomes if o.status == "failed"]

    _finish(console, run.path)
    if failed:
        console.print(f"[red]{len(failed)} configuration(s) failed[/red]; rerun the same command to retry them "
                      "(answered requests are kept and not sent again)")
    ctx.exit(1 if failed else 0)


def _finish(console: Console, run_path: Path) -> None:
    from reports.crosscheck import TABLE_TITLES, crosscheck_tables, display_rows, write_crosscheck_report

    result = crosscheck_tables(run_path)
    if result is None:
        return
    for note in result.notes:
        console.print(f"[dim]{escape(note)}[/dim]")
    for key, (title, spec) in TABLE_TITLES.items():
        frame = result.tables[key]
        if frame.empty:
            continue
        columns, rows = display_rows(frame, spec)
        table = RichTable(title=title, title_justify="left")
        for column in columns:
            table.add_column(escape(column.label), overflow="fold")
        for row in rows:
            table.add_row(*[escape(c.text) + (f"\n[dim]{escape(c.detail)}[/dim]" if c.detail else "") for c in row])
        console.print(table)
    path = write_crosscheck_report(run_path)
    console.print(f"wrote {escape(str(path))}")


class RichDisplay(Display):
    def __init__(self, console: Console):
        self.console = console
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)
        self._task = None
        self._progress.start()

    def config_start(self, config_id: str, n_todo: int, n_already: int) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        if n_already:
            self.console.print(f"{escape(config_id)}: {n_already} request(s) already cross-checked, not sent again")
        self._task = self._progress.add_task(f"  {escape(config_id)}", total=n_todo or None, status="")

    def stage(self, config_id: str, text: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, status=escape(text))

    def request_done(self, record: CrosscheckRecord) -> None:
        if self._task is None:
            return
        tps = f"server {record.server_tps:.1f} tok/s" if record.server_tps is not None else ""
        ttft = f"TTFT {record.ttft_ms:.0f} ms" if record.ttft_ms is not None else ""
        self._progress.update(self._task, advance=1, status=", ".join(x for x in (ttft, tps) if x))

    def config_end(self, outcome: ConfigOutcome) -> None:
        config = escape(outcome.config_id)
        if outcome.status == "failed":
            self.console.print(f"[red]✗ {config}[/red]: {escape(outcome.error or 'failed')}")
        elif outcome.status == "skipped":
            self.console.print(f"[yellow]– {config}[/yellow]: skipped, {escape(outcome.error or '')}")
        else:
            model = f" as {escape(outcome.model.name)}" if outcome.model else ""
            self.console.print(f"[green]✓ {config}[/green]{model}: {outcome.n_sent} request(s) sent")

    def stop(self) -> None:
        self._progress.stop()
