"""Import the `gguf` package without breaking llama.cpp in the same process.

`gguf` imports sentencepiece when it is installed. On a CUDA host (seen on an H200 image with
sentencepiece 0.2), a libllama loaded *after* sentencepiece's extension bound its std::regex code
to the C++ runtime symbols that extension exports, and segfaulted while loading a BPE vocabulary
(`unicode_regex_split` during `llama_model_load_from_file`); with llama.cpp's libraries loaded
first, they keep their own bindings. So every `bench` import of gguf goes through here.
"""

from __future__ import annotations


def gguf_module():
    try:
        import llama_cpp  # noqa: F401  (loads libllama and its C++ runtime first; see above)
    except Exception:  # noqa: BLE001 - no llama.cpp here: nothing to protect
        pass
    import gguf

    return gguf
