"""bench: benchmark small GGUF language models in-process, the way the published study did."""

__version__ = "0.1.0"
