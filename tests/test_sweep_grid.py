"""`bench sweep`'s grid: llama-bench's value syntax, every combination, and a reproducible order."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from bench.sweep.grid import (
    GridError,
    SweepAxes,
    expand_grid,
    measurement_keys,
    parse_choice_list,
    parse_int_list,
    parse_kv_types,
    plan_blocks,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("0-8192+2048", [0, 2048, 4096, 6144, 8192]),
        ("1-16*2", [1, 2, 4, 8, 16]),
        ("1-20*3", [1, 3, 9]),  # stops before passing the end, as llama-bench does
        ("0,512,2048,8192", [0, 512, 2048, 8192]),
        ("512", [512]),
        ("3-5", [3, 4, 5]),
        ("0-10+4,100", [0, 4, 8, 100]),
        ("8,8,16", [8, 16]),  # a value listed twice is measured once
        (" 1 , 2 ", [1, 2]),
    ],
)
def test_llama_bench_list_and_range_syntax(text, expected):
    assert parse_int_list(text) == expected


@pytest.mark.parametrize("text", ["", "a", "1-", "8-4", "1-8/2", "0-16*2", "1-16*1", "1.5", "-1", "1,,2"])
def test_malformed_values_are_refused_with_the_syntax(text):
    with pytest.raises(GridError) as caught:
        parse_int_list(text, name="--depth")
    assert "--depth" in str(caught.value)


def test_negative_only_where_allowed_and_minimums():
    assert parse_int_list("-1,0,20", allow_negative=True) == [-1, 0, 20]
    with pytest.raises(GridError, match="below the minimum 1"):
        parse_int_list("0,1", minimum=1)


def test_word_settings():
    assert parse_choice_list("on,OFF", ("on", "off", "auto")) == ["on", "off"]
    assert parse_kv_types("f16,q8_0,q4_0") == ["f16", "q8_0", "q4_0"]
    with pytest.raises(GridError, match="q3_0"):
        parse_kv_types("f16,q3_0")


def test_every_combination_once_with_its_settings():
    axes = SweepAxes(flash_attn=("on", "off"), kv_type=("f16", "q8_0", "q4_0"), n_batch=(2048,),
                     n_ubatch=(256, 512), n_threads=(4,), n_gpu_layers=(-1, 10))
    grid = expand_grid(["m1", "m2"], axes)
    assert len(grid.configs) == 2 * 2 * 3 * 2 * 2
    assert len({c.config_id for c in grid.configs}) == len(grid.configs)
    seen = {(c.model_id, c.settings["flash_attn"], c.settings["kv_type"], c.settings["n_ubatch"],
             c.settings["n_gpu_layers"]) for c in grid.configs}
    assert seen == set(itertools.product(["m1", "m2"], ["on", "off"], ["f16", "q8_0", "q4_0"], [256, 512], [-1, 10]))
    assert not grid.skipped


def test_a_micro_batch_above_its_batch_is_left_out_and_said():
    grid = expand_grid(["m"], SweepAxes(n_batch=(256, 1024), n_ubatch=(128, 512)))
    pairs = {(c.settings["n_batch"], c.settings["n_ubatch"]) for c in grid.configs}
    assert pairs == {(256, 128), (1024, 128), (1024, 512)}
    assert len(grid.skipped) == 1 and "n_ubatch 512 > n_batch 256" in grid.skipped[0]


def _configs(n_models=2):
    axes = SweepAxes(flash_attn=("on", "off"), kv_type=("f16", "q8_0", "q4_0"))
    return expand_grid([f"m{i}" for i in range(n_models)], axes).configs


@pytest.mark.parametrize("order", ["grid", "random"])
def test_every_config_and_depth_exactly_once_per_repetition(order):
    configs = _configs()
    depths = [0, 512, 2048, 8192]
    blocks = plan_blocks(configs, depths, reps=3, order=order, seed=7)
    keys = measurement_keys(blocks)
    assert Counter(keys) == Counter({(c.config_id, d, r): 1 for c in configs for d in depths for r in range(3)})
    # repetition-major: every repetition finishes before the next starts
    reps = [b.rep for b in blocks]
    assert reps == sorted(reps)


def test_grid_order_is_the_listing():
    configs = _configs()
    blocks = plan_blocks(configs, [0, 512], reps=2, order="grid")
    assert [b.config for b in blocks] == list(configs) * 2
    assert all(b.depths == (0, 512) for b in blocks)


def test_random_order_is_reproducible_from_the_seed_and_differs_between_seeds_and_reps():
    configs = _configs()
    depths = [0, 512, 2048, 8192]
    first = plan_blocks(configs, depths, reps=3, order="random", seed=42)
    again = plan_blocks(configs, depths, reps=3, order="random", seed=42)
    other = plan_blocks(configs, depths, reps=3, order="random", seed=43)
    assert measurement_keys(first) == measurement_keys(again)
    assert measurement_keys(first) != measurement_keys(other)
    per_rep = [[b.config.config_id for b in first if b.rep == r] for r in range(3)]
    assert per_rep[0] != per_rep[1] or per_rep[1] != per_rep[2]
    assert [b.config.config_id for b in first if b.rep == 0] != [c.config_id for c in configs]


def test_bad_plan_arguments():
    with pytest.raises(GridError):
        plan_blocks(_configs(), [0], reps=1, order="sideways")
    with pytest.raises(GridError):
        plan_blocks(_configs(), [], reps=1)
    with pytest.raises(GridError):
        expand_grid([], SweepAxes())
