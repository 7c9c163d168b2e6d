"""What every server client takes and gives back, and the client-side clock both use."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.crosscheck.errors import RequestTimedOut

# The engine's CPU sampler settings (bench.engine.generate.CpuSampler); greedy at temperature 0
# ignores them, but sending them keeps a non-zero temperature comparable too.
TOP_K = 40
TOP_P = 0.95
# An untimed request between timed ones, so no server starts a timed request from a cached prompt
# prefix (our engine clears its KV cache before every request). Its first token differs from every
# chat template's, so at most a BOS stays cached.
FLUSH_PROMPT = "0"
WARMUP_MAX_TOKENS = 16  # as bench.engine.worker's uncounted warm-up


@dataclass
class ServerRequest:
    prompt: str
    max_tokens: int
    seed: int
    temperature: float
    num_ctx: int
    schema: dict | None = None  # constrained decoding: the JSON schema
    num_thread: int | None = None  # the in-process run's threads, when it ran on the CPU
    cpu_only: bool = False  # the in-process run kept every layer on the CPU


@dataclass
class ServerReply:
    output: str
    finish_reason: str | None
    ttft_ms: float | None
    latency_ms: float
    last_content_ms: float | None
    n_content_chunks: int
    t_start_unix: float
    t_end_unix: float
    figures: dict[str, Any] = field(default_factory=dict)  # CrosscheckRecord server fields
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedModel:
    """The model the server will answer with, and whether it is the run's very file."""

    name: str
    same_file: bool | None  # None: the server gives no way to tell
    evidence: str  # how same_file was decided, one line
    details: dict[str, Any] = field(default_factory=dict)


class ServerClient(Protocol):
    kind: str
    url: str

    def describe(self) -> dict[str, Any]: ...
    def prepare(self, config) -> PreparedModel: ...
    def generate(self, model: PreparedModel, request: ServerRequest, *, timed: bool = True) -> ServerReply: ...
    def close(self) -> None: ...


class StreamClock:
    """Client-side times of one streamed request, in ms after the request was sent."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.t0 = time.perf_counter_ns()
        self.t_start_unix = time.time()
        self.first_ms: float | None = None
        self.last_ms: float | None = None
        self.n_content = 0

    def now_ms(self) -> float:
        return (time.perf_counter_ns() - self.t0) / 1e6

    def content(self) -> None:
        t = self.now_ms()
        if self.first_ms is None:
            self.first_ms = t
        self.last_ms = t
        self.n_content += 1

    def check_deadline(self) -> None:
        """A server that streams forever is caught between chunks; a silent one by the read timeout."""
        if self.now_ms() > self.timeout_s * 1000:
            raise RequestTimedOut(f"request ran past --timeout {self.timeout_s:g} s")

    def reply(self, output: str, finish_reason: str | None, figures: dict, extra: dict | None = None) -> ServerReply:
        latency = self.now_ms()
        return ServerReply(
            output=output, finish_reason=finish_reason, ttft_ms=self.first_ms, latency_ms=latency,
            last_content_ms=self.last_ms, n_content_chunks=self.n_content, t_start_unix=self.t_start_unix,
            t_end_unix=self.t_start_unix + latency / 1000, figures=figures, extra=extra or {},
        )


def normalize_url(url: str, default_port: int | None = None) -> str:
    """'localhost:11434' -> 'http://localhost:11434'; no trailing slash."""
    from urllib.parse import urlsplit

    from bench.errors import BenchError

    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BenchError(f"{url!r} is not a server URL (expected e.g. http://127.0.0.1:11434)")
    if parts.port is None and default_port is not None and "://" not in url:
        text = f"{parts.scheme}://{parts.netloc}:{default_port}{parts.path}"
    return text.rstrip("/")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
