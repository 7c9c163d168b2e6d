"""How long scoring a study-sized run takes: 1,012 outputs (22 configurations x the 46-request
`study` preset), NLI and embeddings included.

No NLI checkpoint can be downloaded here, so the NLI model is a randomly initialised network of
exactly cross-encoder/nli-deberta-v3-xsmall's shape (DeBERTa-v2 architecture, 12 layers, hidden
384, 6 heads, FFN 1536, vocab 128,100), saved as a checkpoint and loaded by the real code path.
Its tokenizer is the WordPiece tokenizer of the bundled all-MiniLM-L6-v2 (bert-base-uncased's
vocabulary; DeBERTa-v3's SentencePiece model is not available offline), which splits English
into about as many tokens as DeBERTa-v3's, so sequence lengths — and so the compute — match the
real model's. Probabilities are meaningless; the time is the point.

Outputs are the suite's references, perturbed per configuration (sentences dropped, numbers
changed, words shuffled, a repeated sentence, a refusal now and then; JSON answers fenced, wrapped
in prose, truncated or given extra keys), so every metric's code path runs.

    python benchmarks/score_speed.py [--no-nli] [--no-embed] [--threads N]

Prints the wall time in seconds for each stage and in total.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scoring.metrics.nli import NliScorer  # noqa: E402
from scoring.metrics.randmodel import save_random_nli_model  # noqa: E402
from scoring.metrics.similarity import Embedder, default_embedder_path  # noqa: E402
from scoring.metrics.text import split_sentences  # noqa: E402
from scoring.score import score_many  # noqa: E402
from scoring.tasks import load_suite, variant_parts  # noqa: E402

N_CONFIGS = 22  # the study's configurations; 22 x 46 = 1,012 outputs


_CONNECTIVES = ("Notably, ", "In short, ", "Overall, ", "Also, ", "Indeed, ", "In practice, ")


def _reword(sentence: str, rng: random.Random) -> str:
    """A small edit so that no two configurations write the same sentence (as real models don't)."""
    words = sentence.split()
    roll = rng.random()
    if roll < 0.3 and words:
        return rng.choice(_CONNECTIVES) + words[0][:1].lower() + " ".join(words)[1:]
    if roll < 0.6 and len(words) > 3:
        i = rng.randrange(1, len(words) - 2)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif len(words) > 4:
        del words[rng.randrange(1, len(words) - 1)]
    return " ".join(words)


def perturb_text(text: str, rng: random.Random) -> str:
    paragraphs = text.split("\n\n")
    out = []
    for paragraph in paragraphs:
        sentences = split_sentences(paragraph)
        kept = []
        for sentence in sentences:
            roll = rng.random()
            if roll < 0.08 and len(sentences) > 1:
                continue  # dropped
            if roll < 0.16:
                sentence = _change_a_number(sentence, rng)
            elif roll < 0.22:
                words = sentence.split()
                rng.shuffle(words)
                sentence = " ".join(words)
            kept.append(_reword(_reword(sentence, rng), rng))
        if kept and rng.random() < 0.05:
            kept.append(kept[-1])  # a repeated sentence
        out.append(" ".join(kept))
    result = "\n\n".join(p for p in out if p)
    if rng.random() < 0.02:
        result = "I'm sorry, but I cannot help with that."
    return result


def _change_a_number(sentence: str, rng: random.Random) -> str:
    digits = [i for i, ch in enumerate(sentence) if ch.isdigit()]
    if not digits:
        return sentence
    i = rng.choice(digits)
    return sentence[:i] + str((int(sentence[i]) + rng.randint(1, 8)) % 10) + sentence[i + 1 :]


def as_json(level: str, item, text: str, rng: random.Random) -> str:
    if level == "strong":
        paragraphs = [p for p in text.split("\n\n") if p.strip()] or [text]
        obj = {"name": item.name, "category": item.category, "summary": paragraphs[0].split(". ")[0],
               "paragraphs": paragraphs, "highlights": list(item.facts)[:3],
               "key_facts": {k: v for k, v in list(item.facts.items())[:4]}}
    elif level == "mid":
        obj = {"name": item.name, "category": item.category, "description": text,
               "highlights": [f"{k.replace('_', ' ')}: {v}" for k, v in list(item.facts.items())[:3]]}
    else:
        obj = {"name": item.name, "description": text}
    roll = rng.random()
    if roll < 0.05:
        obj["notes"] = "extra key"
    body = json.dumps(obj, ensure_ascii=False, indent=2 if rng.random() < 0.5 else None)
    if roll < 0.15:
        return f"```json\n{body}\n```"
    if roll < 0.22:
        return f"Here is the description you asked for:\n{body}\nLet me know if you need changes."
    if roll < 0.30:
        return body[: int(len(body) * rng.uniform(0.5, 0.95))]  # cut off at max_tokens
    return body


def synthetic_rows(suite, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for config in range(N_CONFIGS):
        for item_id, variant in suite.presets["study"]:
            level, fmt = variant_parts(variant)
            item = suite.items[item_id]
            text = perturb_text(item.references[level], rng)
            output = as_json(level, item, text, rng) if fmt == "json" else text
            rows.append({"config": f"synthetic-{config:02d}", "item_id": item_id, "variant": variant, "output": output})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-nli", action="store_true")
    parser.add_argument("--no-embed", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N outputs")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    suite = load_suite()
    rows = synthetic_rows(suite)[: args.limit]
    print(f"outputs: {len(rows)}; torch threads: {torch.get_num_threads()}")

    timings: dict[str, float] = {}
    stage_start: dict[str, float] = {}
    totals: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        stage_start.setdefault(stage, now)
        totals[stage] = total
        timings[stage] = now - stage_start[stage]

    nli = embedder = None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if not args.no_nli:
            vocab = default_embedder_path() / "vocab.txt"
            path = save_random_nli_model(Path(tmp) / "nli", architecture="deberta-v3-xsmall", vocab=vocab)
            nli = NliScorer(path, batch_size=args.batch_size)
        if not args.no_embed:
            embedder = Embedder().load()
        load_s = time.perf_counter() - t0

        t0, c0 = time.perf_counter(), time.process_time()
        scored = score_many(rows, suite, nli=nli, embedder=embedder, progress=progress)
        total_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0

    n_pairs = totals.get("nli", 0)
    print(f"model build + load: {load_s:.1f} s (not counted below)")
    for stage in ("rules", "nli", "embed"):
        if stage in timings:
            extra = f" ({n_pairs} unique sentence pairs)" if stage == "nli" else ""
            print(f"{stage:>6}: {timings[stage]:.1f} s{extra}")
    print(f"scoring wall time: {total_s:.1f} s for {len(scored)} outputs")
    # On a shared machine the wall time includes waiting for the CPU; the CPU time doesn't.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"process CPU time: {cpu_s:.1f} s over {os.cpu_count()} cores; load average at the end: {load:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
