"""Errors the scoring package raises. `scoring` never imports `bench`; bench maps these to BenchErrors."""


class ScoringError(Exception):
    """Scoring could not proceed as asked."""


class ScoringInputError(ScoringError):
    """A row cannot be scored: a field is missing, or the item or variant is unknown to the suite."""


class ModelLoadError(ScoringError):
    """A model a metric needs (NLI cross-encoder, sentence embedder) could not be loaded."""


class LabelMappingError(ModelLoadError):
    """An NLI model's id2label does not name its classes (e.g. LABEL_0/LABEL_1/LABEL_2)."""
