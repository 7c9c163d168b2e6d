"""The prompt a model sees: its own chat template from the GGUF, or a stated fallback.

Models are tuned on one chat format; prompting them in another costs quality, so the template
comes from the file's `tokenizer.chat_template` and is rendered the way llama-cpp-python (and
Transformers) render it: Jinja2 in a sandbox, `add_generation_prompt=True`, the file's BOS/EOS
strings. A file without a template gets ChatML — the format SmolLM2, Qwen and many small
instruction models use — and the configuration records `chat_template = "fallback:chatml"` so a
reader knows the prompt was a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

GGUF_TEMPLATE = "gguf"
FALLBACK_CHATML = "fallback:chatml"


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    template: str  # GGUF_TEMPLATE | FALLBACK_CHATML


def render_chatml(messages: Sequence[dict]) -> str:
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


class ChatPrompter:
    """Renders chat messages with one model's template; built once per configuration."""

    def __init__(self, template: str | None, bos_token: str = "", eos_token: str = ""):
        self.label = GGUF_TEMPLATE if template else FALLBACK_CHATML
        self._formatter = None
        if template:
            # llama-cpp-python's formatter tracks Transformers' Jinja environment (sandbox,
            # trim_blocks, loop controls, tojson), so templates render as their authors tested.
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(
                template=template, eos_token=eos_token, bos_token=bos_token, add_generation_prompt=True
            )

    def render(self, messages: Sequence[dict]) -> RenderedPrompt:
        if self._formatter is None:
            return RenderedPrompt(render_chatml(messages), self.label)
        result = self._formatter(messages=[dict(m) for m in messages])
        return RenderedPrompt(result.prompt, self.label)
