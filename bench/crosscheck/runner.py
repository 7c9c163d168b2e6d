"""The cross-check loop: per configuration, get the server ready, warm it, send every request, keep each answer.

Each answer is appended to `crosscheck/<label>.jsonl` as it arrives (one durable write), so an
interrupted cross-check loses nothing and a rerun sends only what is missing. A configuration that
fails (server unreachable, model missing, create failed, a timeout) gets one line and the loop goes
on with the next; the meta file says how each one ended.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench import __version__
from bench.crosscheck.errors import CrosscheckError, RequestTimedOut, ServerUnreachable
from bench.crosscheck.plan import ConfigPlan, PlannedRequest, RunPlan
from bench.crosscheck.records import EVAL_DURATION_FLOOR_NS, CrosscheckRecord, compute_flags, crosscheck_dir, meta_path, records_path
from bench.crosscheck.server import FLUSH_PROMPT, WARMUP_MAX_TOKENS, PreparedModel, ServerReply, ServerRequest, one_line
from bench.errors import BenchError
from bench.records import to_dict
from bench.rundir import append_jsonl, read_jsonl, write_json_atomic

META_SCHEMA_VERSION = 1


@dataclass
class RunOptions:
    label: str
    timeout_s: float
    flush_cache: bool = True  # an untimed request between timed ones, so no prompt prefix stays cached
    warmup: bool = True  # one untimed request per configuration first, as the in-process run did
    extra: dict[str, Any] | None = None  # client options worth recording (pull, keep_alive, schema field)


@dataclass
class ConfigOutcome:
    config_id: str
    status: str  # "ok" | "failed" | "skipped"
    n_sent: int  # timed requests answered in this invocation
    n_already: int  # recorded by an earlier invocation, not sent again
    error: str | None = None
    model: PreparedModel | None = None


class Display:
    """What the runner tells the user; the command draws it with rich, tests may pass this."""

    def config_start(self, config_id: str, n_todo: int, n_already: int) -> None: ...
    def stage(self, config_id: str, text: str) -> None: ...
    def request_done(self, record: CrosscheckRecord) -> None: ...
    def config_end(self, outcome: ConfigOutcome) -> None: ...


def run_crosscheck(plan: RunPlan, client, options: RunOptions, display: Display | None = None) -> list[ConfigOutcome]:
    display = display or Display()
    folder = crosscheck_dir(plan.run.path)
    folder.mkdir(exist_ok=True)
    out_path = records_path(plan.run.path, options.label)
    meta_file = meta_path(plan.run.path, options.label)
    meta = _start_meta(meta_file, client, plan, options)
    done_keys = {row.get("key") for row in read_jsonl(out_path).rows if not row.get("error")}

    unreachable: str | None = None
    try:
        meta["server"] = client.describe()
    except ServerUnreachable as exc:
        unreachable = str(exc)
        meta["server"] = {"kind": client.kind, "url": client.url, "error": unreachable}
    except CrosscheckError as exc:
        meta["server"] = {"kind": client.kind, "url": client.url, "error": str(exc)}
    write_json_atomic(meta_file, meta)

    outcomes = []
    for config in plan.configs:
        todo = [r for r in config.requests if r.key not in done_keys]
        n_already = len(config.requests) - len(todo)
        display.config_start(config.config_id, len(todo), n_already)
        if unreachable is not None:
            outcome = ConfigOutcome(config.config_id, "failed", 0, n_already, unreachable)
        elif not config.requests:
            outcome = ConfigOutcome(config.config_id, "skipped", 0, 0,
                                    "the run recorded no in-process requests for this configuration")
        elif not todo:
            outcome = ConfigOutcome(config.config_id, "ok", 0, n_already)
        else:
            outcome = _run_config(config, todo, n_already, client, options, out_path, display)
        outcomes.append(outcome)
        meta["configs"][config.config_id] = _config_meta(config, outcome, meta["configs"].get(config.config_id))
        write_json_atomic(meta_file, meta)
        display.config_end(outcome)

    meta["finished_utc"] = _utc()
    write_json_atomic(meta_file, meta)
    return outcomes


def server_request(config: ConfigPlan, planned: PlannedRequest) -> ServerRequest:
    ours = planned.ours
    cpu_only = config.device == "cpu"
    return ServerRequest(
        prompt=planned.prompt,
        max_tokens=ours.max_tokens,
        seed=ours.seed,
        temperature=ours.temperature,
        num_ctx=config.n_ctx,
        schema=planned.schema,
        num_thread=config.n_threads if cpu_only else None,
        cpu_only=cpu_only,
    )


def _run_config(config: ConfigPlan, todo: list[PlannedRequest], n_already: int, client, options: RunOptions,
                out_path, display: Display) -> ConfigOutcome:
    n_sent = 0
    model: PreparedModel | None = None
    current: PlannedRequest | None = None
    try:
        display.stage(config.config_id, "preparing the model on the server")
        model = client.prepare(config)
        first = server_request(config, todo[0])
        if options.warmup:
            display.stage(config.config_id, "warming up (untimed)")
            warm = dataclasses.replace(first, max_tokens=min(WARMUP_MAX_TOKENS, first.max_tokens), schema=None)
            client.generate(model, warm, timed=False)
        flush = dataclasses.replace(first, prompt=FLUSH_PROMPT, max_tokens=1, schema=None)
        for planned in todo:
            current = None
            if options.flush_cache:
                client.generate(model, flush, timed=False)
            current = planned
            reply = client.generate(model, server_request(config, planned), timed=True)
            record = build_record(client.kind, options.label, config, planned, model, reply)
            append_jsonl(out_path, to_dict(record))
            n_sent += 1
            display.request_done(record)
        return ConfigOutcome(config.config_id, "ok", n_sent, n_already, model=model)
    except CrosscheckError as exc:
        message = str(exc)
        if current is not None:
            # The timed request that failed is recorded too, so the report can count it.
            failed = build_record(client.kind, options.label, config, current, model, None, error=message)
            append_jsonl(out_path, to_dict(failed))
            if isinstance(exc, RequestTimedOut):
                message = f"{current.ours.request_id} ({current.ours.mode}): {message}"
        return ConfigOutcome(config.config_id, "failed", n_sent, n_already, message, model)


def build_record(kind: str, label: str, config: ConfigPlan, planned: PlannedRequest, model: PreparedModel | None,
                 reply: ServerReply | None, error: str | None = None) -> CrosscheckRecord:
    ours = planned.ours
    rec = CrosscheckRecord(
        server_kind=kind, server_label=label, key=ours.key, config_id=ours.config_id, rep=ours.rep,
        request_id=ours.request_id, item_id=ours.item_id, variant=ours.variant, mode=ours.mode,
        server_model=model.name if model else "", prompt_source=planned.prompt_source,
        n_prompt_tokens_ours=ours.n_prompt_tokens, max_tokens=ours.max_tokens, seed=ours.seed,
        temperature=ours.temperature, num_ctx=config.n_ctx if kind == "ollama" else None, error=error,
    )
    if reply is None:
        return rec
    rec.output = reply.output
    rec.finish_reason = reply.finish_reason
    rec.ttft_ms = reply.ttft_ms
    rec.latency_ms = reply.latency_ms
    rec.last_content_ms = reply.last_content_ms
    rec.n_content_chunks = reply.n_content_chunks
    rec.t_start_unix = reply.t_start_unix
    rec.t_end_unix = reply.t_end_unix
    rec.extra = dict(reply.extra)
    for name, value in reply.figures.items():
        setattr(rec, name, value)
    server_count = rec.eval_count if rec.eval_count is not None else rec.usage_completion_tokens
    if server_count is not None:
        rec.n_gen_tokens, rec.n_gen_tokens_source = server_count, "server"
    elif reply.output == ours.output:
        # Same text from the same file at the same settings: the same tokens as ours.
        rec.n_gen_tokens, rec.n_gen_tokens_source = ours.n_gen_tokens, "matched-output"
    if (rec.n_gen_tokens or 0) >= 2 and rec.ttft_ms is not None and rec.last_content_ms is not None:
        span_ns = (rec.last_content_ms - rec.ttft_ms) * 1e6
        # Chunks cannot arrive faster than the server decodes them unless something held them back
        # (a buffering proxy, a late flush): then their spacing says nothing about decode speed.
        bunched = rec.eval_duration_ns is not None and span_ns < 0.5 * rec.eval_duration_ns
        if span_ns >= EVAL_DURATION_FLOOR_NS and not bunched:
            rec.client_decode_tps = (rec.n_gen_tokens - 1) / (span_ns / 1e9)
    compute_flags(rec)
    return rec


def _start_meta(meta_file, client, plan: RunPlan, options: RunOptions) -> dict[str, Any]:
    previous: dict[str, Any] = {}
    if meta_file.is_file():
        try:
            previous = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
    kind = (previous.get("server") or {}).get("kind")
    if kind and kind != client.kind:
        raise BenchError(
            f"{meta_file.parent.name}/{options.label} holds a cross-check against {kind}; "
            f"pick another --label for {client.kind}"
        )
    run_options = plan.options
    sessions = previous.get("sessions", [])
    sessions.append({"started_utc": _utc(), "argv": sys.argv[1:], "url": client.url})
    return {
        "schema_version": META_SCHEMA_VERSION,
        "label": options.label,
        "tool": {"name": "bench", "version": __version__},
        "server": previous.get("server") or {"kind": client.kind, "url": client.url},
        "started_utc": previous.get("started_utc", _utc()),
        "finished_utc": None,
        "sessions": sessions,
        "options": {
            "endpoint": "/api/generate (raw: true)" if client.kind == "ollama" else "/v1/completions (raw prompt)",
            "stream": True,
            "temperature": run_options.get("temperature"),
            "seed": run_options.get("seed"),
            "max_tokens_cap": run_options.get("max_tokens"),
            "constrained": plan.constrained,
            "timeout_s": options.timeout_s,
            "flush_cache": options.flush_cache,
            "warmup": options.warmup,
            **(options.extra or {}),
        },
        "notes": list(dict.fromkeys(previous.get("notes", []) + plan.notes)),
        "configs": previous.get("configs", {}),
    }


def _config_meta(config: ConfigPlan, outcome: ConfigOutcome, previous: dict | None) -> dict[str, Any]:
    model = outcome.model
    entry = {
        "status": outcome.status,
        "error": outcome.error,
        "n_sent": outcome.n_sent,
        "n_already": outcome.n_already,
        "n_requests": len(config.requests),
        "n_ctx": config.n_ctx,
        "n_ctx_source": config.n_ctx_source,
        "in_process_device": config.device,
        "in_process_flash_attn": config.flash_attn,
        "model_path": config.model_path,
        "sha256": config.sha256,
        "updated_utc": _utc(),
    }
    if model is not None:
        entry.update(server_model=model.name, same_file=model.same_file, same_file_evidence=model.evidence,
                     details=model.details)
    elif previous:
        for key in ("server_model", "same_file", "same_file_evidence", "details"):
            if key in previous:
                entry[key] = previous[key]
    return entry


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["RunOptions", "ConfigOutcome", "Display", "run_crosscheck", "server_request", "build_record", "one_line"]
