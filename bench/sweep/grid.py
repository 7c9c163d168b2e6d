"""The sweep grid: llama-bench's value syntax, every combination of settings, and the run order.

Values follow llama-bench: a comma list of items, each `N`, `FIRST-LAST` (step 1), `FIRST-LAST+STEP`
(additive) or `FIRST-LAST*FACTOR` (multiplicative), e.g. `0-8192+2048` = 0,2048,4096,6144,8192 and
`1-16*2` = 1,2,4,8,16. Settings that are words (flash attention, KV type) are comma lists.

A configuration is one model with one value of every setting; its KV depths are measured inside it
(one load serves every depth). The run is cut into blocks (repetition, configuration): each block
is one load measuring every depth once, so every (configuration, depth) is measured exactly once
per repetition. `--order random` shuffles the configurations within each repetition and the depths
within each block with a generator seeded from (seed, repetition), so heat and clock drift do not
line up with one setting, and the same seed gives the same order again.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from bench.errors import BenchError
from bench.vram import KV_TYPES

FLASH_ATTN_VALUES = ("on", "off", "auto")
ORDERS = ("random", "grid")

_RANGE = re.compile(r"^(-?\d+)(?:-(\d+)(?:([+*])(\d+))?)?$")

# Setting name -> the short label used in configuration ids, in id order.
SETTING_LABELS = {
    "flash_attn": "fa",
    "kv_type": "kv",
    "n_batch": "b",
    "n_ubatch": "ub",
    "n_threads": "t",
    "n_gpu_layers": "ngl",
}


class GridError(BenchError):
    """A sweep value list does not parse, or the grid is empty."""


def parse_int_list(text: str, *, name: str = "value", allow_negative: bool = False, minimum: int | None = None) -> list[int]:
    """llama-bench's `first[-last[(+|*)step]]` items, comma-separated, in the order written."""
    if text is None or not str(text).strip():
        raise GridError(f"{name}: empty value list")
    values: list[int] = []
    for item in str(text).split(","):
        item = item.strip()
        m = _RANGE.match(item)
        if not m or (not allow_negative and item.startswith("-")):
            raise GridError(
                f"{name}: cannot read {item!r}; expected N, FIRST-LAST, FIRST-LAST+STEP or FIRST-LAST*FACTOR "
                f"(e.g. 0-8192+2048 or 1-16*2), comma-separated"
            )
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        op = m.group(3) or "+"
        step = int(m.group(4)) if m.group(4) is not None else 1
        if last < first:
            raise GridError(f"{name}: range {item!r} ends before it starts")
        i = first
        while i <= last:
            values.append(i)
            previous = i
            i = i + step if op == "+" else i * step
            if i <= previous:
                raise GridError(
                    f"{name}: range {item!r} does not advance (step {op}{step} from {previous}); "
                    "a multiplicative range needs a start above 0 and a factor above 1"
                )
    if minimum is not None:
        low = [v for v in values if v < minimum]
        if low:
            raise GridError(f"{name}: {low[0]} is below the minimum {minimum}")
    return _unique(values)


def parse_choice_list(text: str, allowed: Sequence[str], *, name: str = "value") -> list[str]:
    if text is None or not str(text).strip():
        raise GridError(f"{name}: empty value list")
    values = []
    for item in str(text).split(","):
        word = item.strip().lower()
        if word not in allowed:
            raise GridError(f"{name}: unknown value {item.strip()!r}; expected one of {', '.join(allowed)}")
        values.append(word)
    return _unique(values)


def parse_kv_types(text: str) -> list[str]:
    return parse_choice_list(text, tuple(KV_TYPES), name="--kv-type")


def _unique(values: Iterable) -> list:
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class SweepAxes:
    """The value lists of every swept setting (one value = not swept)."""

    flash_attn: tuple[str, ...] = ("auto",)
    kv_type: tuple[str, ...] = ("f16",)
    n_batch: tuple[int, ...] = (2048,)
    n_ubatch: tuple[int, ...] = (512,)
    n_threads: tuple[int, ...] = (1,)
    n_gpu_layers: tuple[int, ...] = (-1,)

    def as_dict(self) -> dict[str, list]:
        return {name: list(getattr(self, name)) for name in SETTING_LABELS}


@dataclass(frozen=True)
class SweepConfig:
    """One model with one value of every setting."""

    config_id: str
    model_id: str
    settings: dict = field(hash=False, compare=True)


def config_id_for(model_id: str, settings: dict) -> str:
    label = ",".join(f"{SETTING_LABELS[name]}={settings[name]}" for name in SETTING_LABELS)
    return f"{model_id}@{label}"


@dataclass(frozen=True)
class Grid:
    configs: tuple[SweepConfig, ...]
    skipped: tuple[str, ...]  # combinations left out, with why


def expand_grid(model_ids: Sequence[str], axes: SweepAxes) -> Grid:
    """Every model x every combination of settings, in a stable (grid) order.

    A micro-batch larger than its batch is left out: llama.cpp would clamp it to the batch, so it
    would measure a combination that is already in the grid under another name.
    """
    if not model_ids:
        raise GridError("no model to sweep")
    configs: list[SweepConfig] = []
    skipped: list[str] = []
    names = list(SETTING_LABELS)
    for model_id in _unique(model_ids):
        for values in itertools.product(*(getattr(axes, name) for name in names)):
            settings = dict(zip(names, values))
            if settings["n_ubatch"] > settings["n_batch"]:
                skipped.append(f"{config_id_for(model_id, settings)}: n_ubatch {settings['n_ubatch']} > "
                               f"n_batch {settings['n_batch']} (llama.cpp would clamp it)")
                continue
            configs.append(SweepConfig(config_id_for(model_id, settings), model_id, settings))
    if not configs:
        raise GridError("every combination was left out: " + "; ".join(skipped[:3]))
    return Grid(tuple(configs), tuple(skipped))


@dataclass(frozen=True)
class Block:
    """One load: a configuration at one repetition, measuring each depth once in this order."""

    rep: int
    config: SweepConfig
    depths: tuple[int, ...]


def plan_blocks(configs: Sequence[SweepConfig], depths: Sequence[int], reps: int, order: str = "random",
                seed: int = 0) -> list[Block]:
    """Repetition-major blocks; within a repetition the configurations (and each block's depths)
    in grid order, or shuffled with a generator seeded from (seed, repetition)."""
    if order not in ORDERS:
        raise GridError(f"--order: expected one of {', '.join(ORDERS)}, got {order!r}")
    if reps < 1:
        raise GridError(f"--reps must be at least 1, got {reps}")
    depths = _unique(depths)
    if not depths:
        raise GridError("--depth: no depth to measure")
    blocks: list[Block] = []
    for rep in range(reps):
        chosen = list(configs)
        if order == "random":
            rng = random.Random(f"bench-sweep:{seed}:{rep}")  # str seeds are stable across runs
            rng.shuffle(chosen)
        for config in chosen:
            block_depths = list(depths)
            if order == "random":
                rng.shuffle(block_depths)
            blocks.append(Block(rep, config, tuple(block_depths)))
    return blocks


def measurement_keys(blocks: Iterable[Block]) -> list[tuple[str, int, int]]:
    """(config_id, depth, rep) of every measurement the blocks make, in run order."""
    return [(b.config.config_id, depth, b.rep) for b in blocks for depth in b.depths]
