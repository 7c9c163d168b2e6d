"""bench: benchmark small GGUF language models in-process, the way the published study did."""

__version__ = "0.1.0"


def _load_llama_cpp_first() -> None:
    """Load llama.cpp's shared libraries before anything else a bench process imports.

    On a CUDA host (an H200 image with numpy 2.x), a process that imported numpy (directly, or
    through gguf, pandas …) before llama_cpp segfaulted inside std::regex while llama.cpp loaded a
    BPE vocabulary; loading libllama first, as a plain `import llama_cpp` does, and preloading
    libstdc++ both avoided it. Every process that loads a model imports `bench`, so this is the one
    place that fixes the order. Without llama-cpp-python installed there is nothing to order.
    """
    try:
        import llama_cpp.llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed or broken: the commands that need it say so
        pass


_load_llama_cpp_first()
