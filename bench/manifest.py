"""The model manifest: which GGUF files make up each configuration of the study.

`gguf_manifest.toml` (repo root, or the file named by $BENCH_MANIFEST) lists one [[model]] table per
configuration. This module loads it, checks every field, and hands out frozen `ModelEntry` records.
A bad manifest raises `ManifestError` whose one-line message names the file, the entry (its id, or
its position when the id is missing) and the field, so a user editing their own manifest can fix it
without reading a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from bench.errors import ManifestError

SCHEMA_VERSION = 1
DEFAULT_MODEL_ID = "smollm2:135m-q4_1"
MANIFEST_ENV_VAR = "BENCH_MANIFEST"
MANIFEST_FILENAME = "gguf_manifest.toml"
LOCK_FILENAME = "gguf.lock"

KNOWN_QUANTS = ("Q4_K_M", "Q8_0", "Q4_1")
KNOWN_SOURCES = ("hf", "package", "local")
# "default" is the embedded model; "A" and "B" are the study's tiers as printed in its tables.
KNOWN_TIERS = ("A", "B", "default")

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MODEL_KEYS = frozenset(
    {
        "id", "family", "params_b", "tier", "arch", "quant", "source", "hf_repo", "hf_files",
        "hf_revision", "ollama_tag", "size_bytes", "sha256", "license", "package", "package_file",
        "shape", "path",
    }
)
_TOP_LEVEL_KEYS = frozenset({"schema_version", "model"})
# Shape keys every architecture has; anything else in [model.shape] goes to ModelShape.extra.
_SHAPE_INT_KEYS = ("n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "n_vocab", "context_length")
_SHAPE_BOOL_KEYS = ("tied_embeddings", "attn_bias")
_SHAPE_FLOAT_KEYS = ("rope_freq_base", "norm_eps")


@dataclass(frozen=True)
class ModelShape:
    """The exact architecture of a model (enough to write a random-weight twin GGUF)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    tied_embeddings: bool
    attn_bias: bool
    context_length: int
    rope_freq_base: float
    norm_eps: float
    # Architecture-specific keys (rope scaling, sliding window, fused tensors...). Excluded from the
    # hash so that a ModelShape (and a ModelEntry holding one) stays hashable.
    extra: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ModelEntry:
    """One model configuration: where its GGUF comes from and what it is."""

    id: str
    family: str
    params_b: float
    tier: str
    arch: str
    quant: str
    source: str
    hf_repo: str | None
    hf_files: tuple[str, ...]
    hf_revision: str
    ollama_tag: str | None
    size_bytes: int | None
    sha256: str | None
    license: str | None
    package: str | None
    package_file: str | None
    shape: ModelShape | None
    # source = "local": a GGUF on this machine (relative paths are taken from the manifest's folder).
    path: str | None = None

    def to_dict(self) -> dict:
        """A JSON-able copy (tuples become lists), for run.json."""
        return _jsonable(dataclasses.asdict(self))


@dataclass(frozen=True)
class Manifest:
    """A loaded, validated manifest file."""

    path: Path
    entries: tuple[ModelEntry, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(entry.id for entry in self.entries)

    @property
    def lock_path(self) -> Path:
        """`gguf.lock` beside the manifest: the checksums actually downloaded."""
        return self.path.parent / LOCK_FILENAME

    def get(self, id: str) -> ModelEntry:  # noqa: A002 - the API names it `id`
        for entry in self.entries:
            if entry.id == id:
                return entry
        raise ManifestError(self._unknown_id_message(id))

    def select(
        self,
        ids: Iterable[str] = (),
        tier: str | None = None,
        quant: str | None = None,
        all_: bool = False,
    ) -> list[ModelEntry]:
        """The entries a command should run, in a stable order.

        - `ids`: exactly these entries, in the order given (duplicates dropped); unknown ids raise.
        - `all_`: every study configuration (the embedded default is not part of the study).
        - `tier` / `quant` alone: the study configurations of that tier / quant.
        - `tier` / `quant` with `ids` or `all_`: narrow that selection.
        - nothing at all: the embedded default model, so a bare command runs without a download.
        An empty result raises ManifestError rather than silently running nothing.
        """
        ids = list(ids)
        tier = _canonical_tier(tier, self.path) if tier is not None else None
        quant = _canonical_quant(quant, self.path) if quant is not None else None
        if not ids and not all_ and tier is None and quant is None:
            return [self.get(DEFAULT_MODEL_ID)]
        candidates = self._named(ids) if ids else []
        if all_ or (not ids and (tier is not None or quant is not None)):
            candidates += [e for e in self.entries if e.tier != "default" or tier == "default"]
        chosen = _dedupe(e for e in candidates if _matches(e, tier, quant))
        if not chosen:
            raise ManifestError(
                f"{_display(self.path)}: no model matches tier={tier!r} quant={quant!r}"
                + (f" among {', '.join(ids)}" if ids else "")
            )
        return chosen

    def _named(self, ids: Sequence[str]) -> list[ModelEntry]:
        return [self.get(model_id) for model_id in ids]

    def _unknown_id_message(self, model_id: str) -> str:
        close = difflib.get_close_matches(str(model_id), self.ids, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"it lists {len(self.ids)} models"
        return f"{_display(self.path)}: unknown model id {model_id!r}; {hint}"


def default_manifest_path() -> Path:
    """$BENCH_MANIFEST if set, else gguf_manifest.toml at the repository root."""
    from_env = os.environ.get(MANIFEST_ENV_VAR, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    return Path(__file__).resolve().parent.parent / MANIFEST_FILENAME


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate a manifest; raise ManifestError naming file, entry and field."""
    manifest_path = Path(path).expanduser() if path is not None else default_manifest_path()
    document = _read_toml(manifest_path)
    where = _display(manifest_path)
    _check_top_level(document, where)
    entries = tuple(_parse_entry(raw, index, where) for index, raw in enumerate(document["model"], start=1))
    _check_unique_ids(entries, where)
    entries = tuple(
        dataclasses.replace(e, path=str((manifest_path.parent / Path(e.path).expanduser()).resolve()))
        if e.path is not None else e
        for e in entries
    )
    return Manifest(path=manifest_path.resolve(), entries=entries)


# --- reading ---------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{_display(path)}: manifest not found (set ${MANIFEST_ENV_VAR} to use another)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{_display(path)}: cannot read manifest: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already carries "(at line N, column M)".
        raise ManifestError(f"{_display(path)}: TOML syntax error: {exc}") from None


def _check_top_level(document: dict, where: str) -> None:
    unknown = sorted(set(document) - _TOP_LEVEL_KEYS)
    if unknown:
        raise ManifestError(f"{where}: unknown top-level key {unknown[0]!r} (expected 'schema_version' and [[model]] tables)")
    version = document.get("schema_version")
    if version is None:
        raise ManifestError(f"{where}: field 'schema_version' is missing (expected {SCHEMA_VERSION})")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ManifestError(f"{where}: field 'schema_version' must be {SCHEMA_VERSION}, got {version!r}")
    models = document.get("model")
    if not isinstance(models, list) or not models:
        raise ManifestError(f"{where}: no [[model]] tables found")
    for index, raw in enumerate(models, start=1):
        if not isinstance(raw, dict):
            raise ManifestError(f"{where}: [[model]] #{index} must be a table, got {raw!r}")


def _check_unique_ids(entries: Sequence[ModelEntry], where: str) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ManifestError(f"{where}: model {entry.id!r}: field 'id' is a duplicate: every id must be unique")
        seen.add(entry.id)


# --- one [[model]] table ---------------------------------------------------------------------


class _Fields:
    """Typed access to one table's fields, with errors that name file, entry and field."""

    def __init__(self, raw: dict, where: str, entry_label: str, prefix: str = "") -> None:
        self.raw = raw
        self.where = where
        self.entry_label = entry_label
        self.prefix = prefix

    def fail(self, name: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.where}: model {self.entry_label}: field '{self.prefix}{name}' {problem}")

    def present(self, name: str) -> bool:
        return name in self.raw

    def _get(self, name: str, required: bool) -> Any:
        if name not in self.raw:
            if required:
                raise self.fail(name, "is missing")
            return None
        return self.raw[name]

    def string(self, name: str, required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(name, f"must be a string, got {_show(value)}")
        if not value.strip():
            raise self.fail(name, "must not be empty")
        return value

    def integer(self, name: str, required: bool = True) -> int | None:
        value = self._get(name, required)
        if value is None:
            return None
        # bool is an int subclass in Python; `true` is never a valid size.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(name, f"must be an integer, got {_show(value)}")
        if value <= 0:
            raise self.fail(name, f"must be positive, got {value}")
        return value

    def number(self, name: str, required: bool = True) -> float | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.fail(name, f"must be a number, got {_show(value)}")
        if not value > 0:
            raise self.fail(name, f"must be positive, got {value}")
        return float(value)

    def boolean(self, name: str, required: bool = True) -> bool | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {_show(value)}")
        return value

    def choice(self, name: str, allowed: Sequence[str]) -> str:
        value = self.string(name)
        if value not in allowed:
            raise self.fail(name, f"must be one of {', '.join(allowed)}, got {_show(value)}")
        return value

    def string_list(self, name: str, required: bool = True) -> tuple[str, ...]:
        value = self._get(name, required)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            raise self.fail(name, f"must be a list of file names, got {_show(value)}")
        return tuple(value)


def _entry_label(raw: dict, index: int) -> str:
    model_id = raw.get("id")
    if isinstance(model_id, str) and model_id.strip():
        return repr(model_id)
    return f"#{index} (no id)"


def _parse_entry(raw: dict, index: int, where: str) -> ModelEntry:
    fields = _Fields(raw, where, _entry_label(raw, index))
    unknown = sorted(set(raw) - _MODEL_KEYS)
    if unknown:
        raise fields.fail(unknown[0], "is not a known field (a typo?)")
    source = fields.choice("source", KNOWN_SOURCES)
    hf_files = fields.string_list("hf_files", required=False)
    entry = ModelEntry(
        id=fields.string("id"),
        family=fields.string("family"),
        params_b=fields.number("params_b"),
        tier=fields.choice("tier", KNOWN_TIERS),
        arch=fields.string("arch"),
        quant=fields.choice("quant", KNOWN_QUANTS),
        source=source,
        hf_repo=fields.string("hf_repo", required=source == "hf"),
        hf_files=hf_files,
        hf_revision=fields.string("hf_revision", required=False) or "main",
        ollama_tag=fields.string("ollama_tag", required=False),
        size_bytes=fields.integer("size_bytes", required=False),
        sha256=_sha256(fields),
        license=fields.string("license", required=False),
        package=fields.string("package", required=source == "package"),
        package_file=fields.string("package_file", required=source == "package"),
        shape=_parse_shape(raw.get("shape"), fields) if fields.present("shape") else None,
        path=fields.string("path", required=source == "local"),
    )
    if source == "hf" and not entry.hf_files:
        raise fields.fail("hf_files", "must list at least one file for source = \"hf\"")
    return entry


def _sha256(fields: _Fields) -> str | None:
    value = fields.string("sha256", required=False)
    if value is not None and not _SHA256_RE.match(value):
        raise fields.fail("sha256", f"must be 64 lowercase hex digits, got {_show(value)}")
    return value


def _parse_shape(raw: Any, parent: _Fields) -> ModelShape:
    if not isinstance(raw, dict):
        raise parent.fail("shape", f"must be a table ([model.shape]), got {_show(raw)}")
    fields = _Fields(raw, parent.where, parent.entry_label, prefix="shape.")
    values: dict[str, Any] = {}
    for name in _SHAPE_INT_KEYS:
        values[name] = fields.integer(name)
    for name in _SHAPE_BOOL_KEYS:
        values[name] = fields.boolean(name)
    for name in _SHAPE_FLOAT_KEYS:
        values[name] = fields.number(name)
    # Grouped-query attention shares each KV head among a whole number of query heads.
    if values["n_head"] % values["n_head_kv"]:
        raise fields.fail("n_head_kv", f"must divide n_head ({values['n_head']}), got {values['n_head_kv']}")
    known = set(_SHAPE_INT_KEYS) | set(_SHAPE_BOOL_KEYS) | set(_SHAPE_FLOAT_KEYS)
    extra = {name: value for name, value in raw.items() if name not in known}
    return ModelShape(**values, extra=extra)


# --- selection helpers -----------------------------------------------------------------------


def _canonical_tier(tier: str, path: Path) -> str:
    for known in KNOWN_TIERS:
        if str(tier).lower() == known.lower():
            return known
    raise ManifestError(f"{_display(path)}: unknown tier {tier!r}; expected one of {', '.join(KNOWN_TIERS)}")


def _canonical_quant(quant: str, path: Path) -> str:
    for known in KNOWN_QUANTS:
        if str(quant).lower() == known.lower():
            return known
    raise ManifestError(f"{_display(path)}: unknown quant {quant!r}; expected one of {', '.join(KNOWN_QUANTS)}")


def _matches(entry: ModelEntry, tier: str | None, quant: str | None) -> bool:
    return (tier is None or entry.tier == tier) and (quant is None or entry.quant == quant)


def _dedupe(entries: Iterable[ModelEntry]) -> list[ModelEntry]:
    seen: set[str] = set()
    kept = []
    for entry in entries:
        if entry.id not in seen:
            seen.add(entry.id)
            kept.append(entry)
    return kept


# --- formatting ------------------------------------------------------------------------------


def _display(path: Path) -> str:
    """The path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
