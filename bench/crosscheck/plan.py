"""What to send a server: the run's configurations, its exact prompts and its options, read from RUN_DIR.

The in-process engine stores the prompt string it rendered with the GGUF's own chat template in each
record (`extra["prompt"]`). The cross-check sends that very string as a raw prompt, so both sides
tokenize identical text. Runs written before the engine stored it are re-rendered here from the
GGUF's template, and the records say so (`prompt_source = "re-rendered"`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import records
from bench.errors import BenchError
from bench.rundir import RunDir

PROMPT_FROM_RUN = "run"
PROMPT_RE_RENDERED = "re-rendered"


@dataclass
class PlannedRequest:
    """One in-process request to repeat on a server, with everything needed to match it."""

    ours: records.RequestRecord
    prompt: str  # the text the server receives (see server_prompt)
    prompt_source: str  # PROMPT_FROM_RUN | PROMPT_RE_RENDERED
    schema: dict | None  # the JSON schema, for constrained requests only

    @property
    def key(self) -> str:
        return self.ours.key


@dataclass
class ConfigPlan:
    config_id: str
    entry: dict[str, Any]  # the manifest entry as run.json stored it
    model_path: str | None
    model_bytes: int | None
    sha256: str | None
    ollama_tag: str | None
    n_ctx: int  # the context the in-process run used (sent to Ollama explicitly)
    n_ctx_source: str  # "config record" | "run option" | "computed"
    device: str | None  # "gpu" | "cpu" | "mixed" as the in-process run loaded it
    n_threads: int | None
    flash_attn: bool | None
    requests: list[PlannedRequest] = field(default_factory=list)


@dataclass
class RunPlan:
    run: RunDir
    options: dict[str, Any]
    constrained: bool
    configs: list[ConfigPlan]
    notes: list[str] = field(default_factory=list)


def server_prompt(text: str, add_bos: bool, bos_token: str) -> str:
    """The prompt string a server must get so that it tokenizes to what our engine decoded.

    Servers tokenize a raw prompt with special tokens parsed and add BOS themselves when the model
    asks for one; our engine adds BOS only when the rendered text does not already start with it.
    So a template that writes BOS itself would get it twice on the server: drop the leading BOS text.
    """
    if add_bos and bos_token and text.startswith(bos_token):
        return text[len(bos_token):]
    return text


def context_size(requests: list[records.RequestRecord]) -> int:
    """The engine's own rule (bench.engine.worker._context_size) from recorded token counts."""
    need = max((r.n_prompt_tokens + r.max_tokens for r in requests), default=512) + 16
    return max(512, -(-need // 256) * 256)


def plan_run(run_path: str | Path, config_ids: tuple[str, ...] | list[str] = (), limit: int | None = None) -> RunPlan:
    run = RunDir.open(run_path)
    meta = run.meta()
    options = meta.get("options") or {}
    entries = _config_entries(meta)
    if not entries:
        raise BenchError(f"{run.path}: run.json lists no configurations")
    unknown = [c for c in config_ids if c not in entries]
    if unknown:
        raise BenchError(f"--config {', '.join(unknown)}: not in this run (it has {', '.join(entries)})")
    chosen = list(config_ids) or list(entries)

    by_config: dict[str, dict[str, records.RequestRecord]] = {}
    for rec in run.requests():
        by_config.setdefault(rec.config_id, {})[rec.key] = rec  # a later line for a key wins
    config_records: dict[str, records.ConfigRecord] = {}
    for cfg in run.configs():
        if cfg.status == "ok" or cfg.config_id not in config_records:
            config_records[cfg.config_id] = cfg

    notes: list[str] = []
    plans = []
    for config_id in chosen:
        entry, resolved = entries[config_id]
        recs = list(by_config.get(config_id, {}).values())
        if limit is not None:
            recs = recs[:limit]
        cfg = config_records.get(config_id)
        n_ctx, n_ctx_source = _n_ctx(cfg, options, recs)
        plan = ConfigPlan(
            config_id=config_id,
            entry=entry,
            model_path=(resolved or {}).get("path") or (cfg.model_path if cfg else None),
            model_bytes=(resolved or {}).get("size_bytes") or (cfg.model_bytes if cfg else None),
            sha256=(resolved or {}).get("sha256") or (cfg.sha256 if cfg else None),
            ollama_tag=entry.get("ollama_tag"),
            n_ctx=n_ctx,
            n_ctx_source=n_ctx_source,
            device=cfg.device if cfg else None,
            n_threads=(cfg.n_threads if cfg and cfg.n_threads else options.get("n_threads")),
            flash_attn=cfg.flash_attn if cfg else None,
        )
        plan.requests = _planned_requests(plan, recs, notes)
        plans.append(plan)
    return RunPlan(run=run, options=options, constrained=bool(options.get("constrained")), configs=plans,
                   notes=notes)


def _config_entries(meta: dict) -> dict[str, tuple[dict, dict | None]]:
    """config id -> (manifest entry, resolved file) from run.json, in run order."""
    out: dict[str, tuple[dict, dict | None]] = {}
    for config in meta.get("configs") or []:
        if isinstance(config, dict) and config.get("config_id"):
            out[config["config_id"]] = (config.get("entry") or {}, config.get("resolved"))
    models = meta.get("models")
    if isinstance(models, dict):  # {config_id: entry + path + sha256}, the layout the brief first named
        for config_id, entry in models.items():
            if config_id not in out and isinstance(entry, dict):
                resolved = {"path": entry.get("path"), "sha256": entry.get("sha256"),
                            "size_bytes": entry.get("size_bytes")}
                out[config_id] = (entry, resolved)
    return out


def _n_ctx(cfg: records.ConfigRecord | None, options: dict, recs: list[records.RequestRecord]) -> tuple[int, str]:
    if cfg is not None and cfg.n_ctx:
        return int(cfg.n_ctx), "config record"
    if options.get("n_ctx"):
        return int(options["n_ctx"]), "run option"
    return context_size(recs), "computed"


def _planned_requests(plan: ConfigPlan, recs: list[records.RequestRecord], notes: list[str]) -> list[PlannedRequest]:
    suite = None
    renderer = None
    out = []
    for rec in recs:
        text = rec.extra.get("prompt") if isinstance(rec.extra, dict) else None
        if isinstance(text, str):
            prompt = server_prompt(text, bool(rec.extra.get("add_bos")), rec.extra.get("bos_token") or "")
            source = PROMPT_FROM_RUN
        else:
            if renderer is None:
                renderer = _GgufRenderer(plan.model_path, plan.config_id)
                notes.append(
                    f"{plan.config_id}: the run's records do not carry the rendered prompt (an older engine); "
                    "prompts were re-rendered from the GGUF's chat template"
                )
            if suite is None:
                suite = _suite()
            prompt = renderer.render(suite.request(rec.item_id, rec.variant).messages)
            source = PROMPT_RE_RENDERED
        schema = None
        if rec.mode == "constrained":
            if suite is None:
                suite = _suite()
            schema = suite.request(rec.item_id, rec.variant).schema
        out.append(PlannedRequest(ours=rec, prompt=prompt, prompt_source=source, schema=schema))
    return out


def _suite():
    from scoring.tasks import load_suite

    return load_suite()


class _GgufRenderer:
    """The engine's prompt rendering (bench.engine.chat) fed from the GGUF's metadata, no model load."""

    def __init__(self, path: str | None, config_id: str):
        if not path or not Path(path).is_file():
            raise BenchError(
                f"{config_id}: the run's records lack the rendered prompt and the model file "
                f"({path}) is gone, so the prompt cannot be rebuilt; fetch it again (bench fetch {config_id})"
            )
        from gguf import GGUFReader

        from bench.engine.chat import ChatPrompter

        fields = GGUFReader(path).fields

        def value(name):
            f = fields.get(name)
            return f.contents() if f is not None else None

        tokens = fields.get("tokenizer.ggml.tokens")

        def token(id_key: str) -> str:
            index = value(id_key)
            if tokens is None or index is None:
                return ""
            return tokens.contents(int(index))

        add_bos = value("tokenizer.ggml.add_bos_token")
        if add_bos is None:  # llama.cpp's default: SentencePiece vocabularies add BOS, BPE ones do not
            add_bos = value("tokenizer.ggml.model") == "llama"
        self.add_bos = bool(add_bos)
        self.bos_token = token("tokenizer.ggml.bos_token_id")
        self._prompter = ChatPrompter(value("tokenizer.chat_template"), self.bos_token,
                                      token("tokenizer.ggml.eos_token_id"))

    def render(self, messages) -> str:
        return server_prompt(self._prompter.render(messages).text, self.add_bos, self.bos_token)
