"""Randomly initialised NLI cross-encoders saved as ordinary checkpoints, for offline tests and timing.

No NLI checkpoint can be downloaded on a machine without network, yet the NLI plumbing (loading,
label mapping, batching) and its cost must still be exercised. These build real
transformers sequence-classification models with random weights and a WordPiece tokenizer, and
save them with `save_pretrained`, so `NliScorer` loads them exactly as it loads a downloaded one.
Their probabilities mean nothing; their shapes and compute are real.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["NLI_LABELS", "save_random_nli_model", "DEBERTA_V3_XSMALL_SHAPE", "TINY_BERT_SHAPE"]

NLI_LABELS = ("entailment", "neutral", "contradiction")
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# microsoft/deberta-v3-xsmall's dimensions (cross-encoder/nli-deberta-v3-xsmall's config.json).
DEBERTA_V3_XSMALL_SHAPE = dict(
    vocab_size=128100, hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
    max_position_embeddings=512, relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
    share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
    max_relative_positions=-1, layer_norm_eps=1e-7, pad_token_id=0,
)
TINY_BERT_SHAPE = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
)


def wordpiece_vocab(texts: Iterable[str]) -> list[str]:
    """Special tokens, single characters (with ## forms) and the lowercased words of `texts`."""
    chars = [chr(c) for c in range(33, 127)]
    words = sorted({w for t in texts for w in re.findall(r"[a-z0-9]+", t.lower())})
    return _SPECIAL + chars + [f"##{c}" for c in chars] + [w for w in words if w not in chars]


def save_random_nli_model(
    path: str | Path,
    *,
    id2label: Sequence[str] = NLI_LABELS,
    architecture: str = "bert",
    vocab: Sequence[str] | Path | None = None,
    seed: int = 0,
    classifier_scale: float = 1.0,
    row_order: Sequence[int] | None = None,
) -> Path:
    """Save a random NLI cross-encoder with `id2label` to `path`; returns `path`.

    architecture: "bert" (tiny, TINY_BERT_SHAPE) or "deberta-v3-xsmall" (DEBERTA_V3_XSMALL_SHAPE).
    vocab: WordPiece tokens, or a vocab.txt path (e.g. a BERT model's); default: characters only.
    classifier_scale: multiplies the classification head so the random classes differ clearly.
    row_order: build the head from the SAME seed's rows taken in this order, so a second model
      with permuted labels and permuted rows computes the same function as the first.
    """
    import torch
    from transformers import BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if vocab is None:
        vocab = wordpiece_vocab([])
    if isinstance(vocab, Path):
        tokens = vocab.read_text(encoding="utf-8").splitlines()
    else:
        tokens = list(vocab)
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    labels = {i: name for i, name in enumerate(id2label)}

    torch.manual_seed(seed)
    if architecture == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(vocab_size=len(tokens), num_labels=len(labels), id2label=labels,
                            label2id={v: k for k, v in labels.items()}, **TINY_BERT_SHAPE)
        model = BertForSequenceClassification(config)
    elif architecture == "deberta-v3-xsmall":
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

        shape = dict(DEBERTA_V3_XSMALL_SHAPE)
        shape["vocab_size"] = max(shape["vocab_size"], len(tokens))
        config = DebertaV2Config(num_labels=len(labels), id2label=labels,
                                 label2id={v: k for k, v in labels.items()}, **shape)
        model = DebertaV2ForSequenceClassification(config)
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    head = model.classifier
    with torch.no_grad():
        head.weight.mul_(classifier_scale)
        head.bias.normal_(0.0, 0.5 * classifier_scale)
        if row_order is not None:
            order = torch.tensor(list(row_order))
            head.weight.copy_(head.weight[order].clone())
            head.bias.copy_(head.bias[order].clone())
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
