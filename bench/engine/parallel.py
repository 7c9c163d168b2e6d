"""Throughput mode: N requests at once, as N sequences of one llama.cpp batch.

A server answering several users decodes their sequences together: each step is one llama_batch
with one token per active sequence, so the weights are read once for all of them and aggregate
tokens per second grow with N while each stream slows a little. This module runs that loop on an
`Engine` whose context was created with `n_seq_max >= N`:

- prefill: every prompt goes into the batch as its own sequence (split at n_batch tokens), with
  an output only at each prompt's last token; each sequence's first token is sampled as soon as
  the chunk holding its last prompt token is decoded;
- decode: one token per active sequence per step; per-sequence sampling (its own chain: the
  backend chain attached to that sequence id, or a CPU chain, grammar included); a sequence that
  ends (EOS, unless ignored, or max tokens) leaves the batch and its KV cells are freed.

Every request gets its own Generation (token times from the common start, so TTFT includes
waiting for the other prompts' prefill); the ParallelResult adds the aggregate figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import llama_cpp as _ll

from bench.engine.generate import Engine, Generation, GenerationError, Sampler


@dataclass
class ParallelResult:
    generations: list[Generation]
    n_parallel: int
    t_start_ns: int
    t_done_ns: int
    sampler: str  # "gpu" | "cpu" (what sampled: backend chains or CPU chains)

    @property
    def total_tokens(self) -> int:
        return sum(len(g.token_ids) for g in self.generations)

    @property
    def wall_s(self) -> float:
        return (self.t_done_ns - self.t_start_ns) / 1e9

    @property
    def aggregate_tps(self) -> float | None:
        """Every generated token over the whole wall time, prefill included."""
        return self.total_tokens / self.wall_s if self.wall_s > 0 else None

    @property
    def aggregate_decode_tps(self) -> float | None:
        """Tokens after each stream's first, over the span from the last first token to the last
        token of all: the decode-phase throughput, comparable with single-stream decode TPS."""
        firsts = [g.token_times_ns[0] for g in self.generations if g.token_times_ns]
        lasts = [g.token_times_ns[-1] for g in self.generations if g.token_times_ns]
        if not firsts:
            return None
        t0, t1 = max(firsts), max(lasts)
        # Tokens that arrived inside [t0, t1], after each stream's first.
        n = sum(sum(1 for t in g.token_times_ns[1:] if t > t0) for g in self.generations)
        return n / ((t1 - t0) / 1e9) if t1 > t0 and n else None

    def summary(self) -> dict:
        return {
            "n_parallel": self.n_parallel,
            "total_tokens": self.total_tokens,
            "wall_s": self.wall_s,
            "aggregate_tps": self.aggregate_tps,
            "aggregate_decode_tps": self.aggregate_decode_tps,
            "sampler": self.sampler,
        }


class ParallelDecoder:
    """Owns one llama_batch big enough for a step of N sequences (or a prefill chunk)."""

    def __init__(self, engine: Engine, n_parallel: int):
        if n_parallel < 1:
            raise ValueError("n_parallel must be at least 1")
        self.engine = engine
        self.n_parallel = n_parallel
        self.capacity = max(engine.n_batch, n_parallel)
        self._batch = _ll.llama_batch_init(self.capacity, 0, 1)

    def close(self) -> None:
        if self._batch is not None:
            _ll.llama_batch_free(self._batch)
            self._batch = None

    def __enter__(self) -> "ParallelDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int] | int, sampler: Sampler,
                 grammars: Sequence[str | None] | None = None, ignore_eos: bool = False) -> ParallelResult:
        n = len(prompts)
        if not 1 <= n <= self.n_parallel:
            raise GenerationError(f"{n} requests for a decoder of {self.n_parallel} sequences")
        eng = self.engine
        limits = [max_tokens] * n if isinstance(max_tokens, int) else list(max_tokens)
        grammars = list(grammars) if grammars is not None else [None] * n
        per_seq_ctx = eng.n_ctx // max(self.n_parallel, 1)
        for s, prompt in enumerate(prompts):
            if len(prompt) + limits[s] > per_seq_ctx:
                raise GenerationError(
                    f"prompt ({len(prompt)} tokens) + max_tokens ({limits[s]}) exceeds the "
                    f"{per_seq_ctx} cells each of {self.n_parallel} sequences gets"
                )
        wanted = bool(getattr(sampler, "backend", False)) and all(g is None for g in grammars)
        on_gpu = eng.select_gpu_chain(wanted) and wanted and all(eng.gpu_chain(s) for s in range(n))
        own_chains = []
        if on_gpu:
            chains = [eng.gpu_chain(s) for s in range(n)]
            for chain in chains:
                _ll.llama_sampler_reset(chain)
        else:
            chains = []
            try:
                for s in range(n):
                    chains.append(sampler.chain(grammars[s]))
            except BaseException:
                for chain in chains:
                    _ll.llama_sampler_free(chain)
                raise
            own_chains = chains
        try:
            eng.clear_cache()
            gens = self._run(prompts, limits, chains, ignore_eos)
        finally:
            for chain in own_chains:
                _ll.llama_sampler_free(chain)
        label = "gpu" if on_gpu else "cpu"
        for g in gens.generations:
            g.extra["sampler"] = label
        gens.sampler = label
        return gens

    def _run(self, prompts, limits, chains, ignore_eos) -> ParallelResult:
        eng = self.engine
        ctx, vocab = eng.ctx, eng.vocab
        batch = self._batch
        tok_arr, pos_arr, nseq_arr, seq_arr, logit_arr = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        decode = _ll.llama_decode
        sample = _ll.llama_sampler_sample
        is_eog = _ll.llama_vocab_is_eog
        now = time.perf_counter_ns
        mem = _ll.llama_get_memory(ctx)
        n = len(prompts)
        ids: list[list[int]] = [[] for _ in range(n)]
        times: list[list[int]] = [[] for _ in range(n)]
        finish = ["length"] * n
        last_tok = [0] * n
        pos = [len(p) for p in prompts]

        t_start_unix = time.time()
        t_start = now()
        # Prefill: all prompts, chunked at the batch capacity; outputs at each prompt's last token.
        flat = [(s, i, t) for s, p in enumerate(prompts) for i, t in enumerate(p)]
        active: list[int] = []
        for offset in range(0, len(flat), self.capacity):
            chunk = flat[offset:offset + self.capacity]
            outputs = []
            for j, (s, i, t) in enumerate(chunk):
                tok_arr[j] = t
                pos_arr[j] = i
                nseq_arr[j] = 1
                seq_arr[j][0] = s
                is_last = i == len(prompts[s]) - 1
                logit_arr[j] = 1 if is_last else 0
                if is_last:
                    outputs.append((j, s))
            batch.n_tokens = len(chunk)
            rc = decode(ctx, batch)
            if rc != 0:
                raise GenerationError(f"llama_decode failed on the prompts (code {rc})")
            for j, s in outputs:
                tok = sample(chains[s], ctx, j)
                t = now()
                if not ignore_eos and is_eog(vocab, tok):
                    finish[s] = "stop"
                    _ll.llama_memory_seq_rm(mem, s, -1, -1)
                    continue
                ids[s].append(tok)
                times[s].append(t)
                last_tok[s] = tok
                if len(ids[s]) >= limits[s]:
                    _ll.llama_memory_seq_rm(mem, s, -1, -1)
                else:
                    active.append(s)

        # Decode: one token per active sequence per step.
        layout_dirty = True
        while active:
            m = len(active)
            if layout_dirty:
                for j, s in enumerate(active):
                    nseq_arr[j] = 1
                    seq_arr[j][0] = s
                    logit_arr[j] = 1
                batch.n_tokens = m
                layout_dirty = False
            for j, s in enumerate(active):
                tok_arr[j] = last_tok[s]
                pos_arr[j] = pos[s]
                pos[s] += 1
            rc = decode(ctx, batch)
            if rc != 0:
                raise GenerationError(f"llama_decode failed in a {m}-sequence step (code {rc})")
            still = []
            for j, s in enumerate(active):
                tok = sample(chains[s], ctx, j)
                t = now()
                if not ignore_eos and is_eog(vocab, tok):
                    finish[s] = "stop"
                    _ll.llama_memory_seq_rm(mem, s, -1, -1)
                    continue
                ids[s].append(tok)
                times[s].append(t)
                last_tok[s] = tok
                if len(ids[s]) >= limits[s]:
                    _ll.llama_memory_seq_rm(mem, s, -1, -1)
                else:
                    still.append(s)
            if len(still) != m:
                layout_dirty = True
            active = still
        t_done = now()
        gens = [
            Generation(
                token_ids=ids[s],
                token_times_ns=times[s],
                t_start_ns=t_start,
                t_done_ns=times[s][-1] if times[s] else t_done,
                t_start_unix=t_start_unix,
                text=eng.detokenize(ids[s]),
                finish_reason=finish[s],
                n_prompt_tokens=len(prompts[s]),
                extra={"parallel": self.n_parallel, "slot": s},
            )
            for s in range(n)
        ]
        return ParallelResult(gens, self.n_parallel, t_start, t_done, sampler="cpu")
