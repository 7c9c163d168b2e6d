"""An OpenAI-compatible server (llama.cpp's llama-server, llama-cpp-python's server, vLLM) over plain httpx.

`/v1/completions` with the raw prompt string, not `/v1/chat/completions`: the chat route renders
messages with the server's own template handling, so the two sides could tokenize different text.
Streamed (SSE) with `stream_options.include_usage`, so the last chunk carries `usage`; llama-server
also sends its own `timings` (prompt_n, prompt_ms, predicted_n, predicted_ms, …), read when present.

The server loads whatever file it was started with; the cross-check cannot swap it. Whether it is
the run's file is judged from the model id / `/props` model path naming the same file, and said.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import PurePath
from typing import Any, Iterator

import httpx

from bench.crosscheck.errors import ModelMissing, RequestTimedOut, ServerError, ServerUnreachable
from bench.crosscheck.server import TOP_K, TOP_P, PreparedModel, ServerReply, ServerRequest, StreamClock, normalize_url, one_line

# How a server takes a JSON schema for constrained decoding on /v1/completions.
SCHEMA_FIELDS = ("json_schema", "grammar", "response_format", "guided_json")


def completion_body(model: str, request: ServerRequest, schema_field: str = "json_schema") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "seed": request.seed,
        "top_p": TOP_P,
        "top_k": TOP_K,
        "min_p": 0.0,
        # llama-cpp-python's server defaults repeat_penalty to 1.1; our engine applies none.
        "repeat_penalty": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # llama-server: evaluate the whole prompt every time, as our engine does.
        "cache_prompt": False,
    }
    if request.schema is not None:
        if schema_field == "json_schema":  # llama-server
            body["json_schema"] = request.schema
        elif schema_field == "grammar":  # llama-cpp-python: GBNF from the converter our engine uses
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            body["grammar"] = json_schema_to_gbnf(json.dumps(request.schema))
        elif schema_field == "response_format":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "description", "schema": request.schema}}
        elif schema_field == "guided_json":  # vLLM
            body["guided_json"] = request.schema
        else:
            raise ValueError(f"unknown schema field {schema_field!r}")
    return body


class OpenAIClient:
    kind = "openai"

    def __init__(self, url: str, *, timeout_s: float = 300.0, model: str | None = None,
                 schema_field: str = "json_schema"):
        base = normalize_url(url)
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        self.url = base
        self.timeout_s = timeout_s
        self.model = model
        self.schema_field = schema_field
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)
        self._models: list[dict] | None = None
        self._props: dict | None = None

    def close(self) -> None:
        self._http.close()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            text = one_line(exc)
            reason = "connection refused" if "refused" in text.lower() else text
            raise ServerUnreachable(f"cannot reach the server at {self.url} ({reason})") from None
        except httpx.TimeoutException:
            raise RequestTimedOut(f"{what}: no answer within --timeout {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ServerError(f"{what}: {one_line(exc)}") from None

    # -- server ----------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        with self._errors("GET /v1/models"):
            response = self._http.get("/v1/models")
        if response.status_code >= 400:
            raise ServerError(f"GET /v1/models answered {response.status_code}: {_error_text(response)}")
        try:
            self._models = [m for m in response.json().get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError):
            raise ServerError("GET /v1/models did not answer with an OpenAI model list") from None
        self._props = self._optional_json("/props")  # llama-server: build, model path, context size
        version = self._optional_json("/version")  # vLLM
        info: dict[str, Any] = {
            "kind": self.kind,
            "url": self.url,
            "models": [{"id": m.get("id"), "owned_by": m.get("owned_by")} for m in self._models],
            "version": None,
        }
        if self._props:
            info["version"] = self._props.get("build_info")
            info["props"] = {
                "model_path": self._props.get("model_path"),
                "n_ctx": (self._props.get("default_generation_settings") or {}).get("n_ctx"),
                "total_slots": self._props.get("total_slots"),
            }
        elif isinstance(version, dict):
            info["version"] = version.get("version")
        return info

    def _optional_json(self, path: str) -> dict | None:
        try:
            response = self._http.get(path)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            data = response.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    # -- models ----------------------------------------------------------------------------------

    def prepare(self, config) -> PreparedModel:
        if self._models is None:
            self.describe()
        ids = [m.get("id") for m in self._models or [] if m.get("id")]
        if self.model:
            if ids and self.model not in ids:
                raise ModelMissing(f"{self.url} does not serve {self.model!r}; it serves {', '.join(ids)}")
            name = self.model
        elif len(ids) == 1:
            name = ids[0]
        elif not ids:
            raise ModelMissing(f"{self.url} lists no model at /v1/models")
        else:
            raise ModelMissing(f"{self.url} serves {len(ids)} models ({', '.join(ids)}); pick one with --openai-model")
        same, evidence = self._same_file(name, config.model_path)
        details: dict[str, Any] = {"model": name}
        n_ctx = ((self._props or {}).get("default_generation_settings") or {}).get("n_ctx")
        if isinstance(n_ctx, int):
            details["server_n_ctx"] = n_ctx
        return PreparedModel(name, same, evidence, details)

    def _same_file(self, name: str, model_path: str | None) -> tuple[bool | None, str]:
        if not model_path:
            return None, "the run recorded no model path"
        ours = PurePath(model_path).name
        named = [c for c in (name, (self._props or {}).get("model_path")) if isinstance(c, str) and c]
        if any(PurePath(c).name == ours for c in named):
            return True, f"the server's model id / path names the run's file {ours} (by name; the server gives no hash)"
        if any(c.endswith(".gguf") for c in named):
            return False, f"the server loaded {', '.join(named)}, the run loaded {ours}"
        return None, f"the server's model id {name!r} does not say which file it loaded"

    # -- requests --------------------------------------------------------------------------------

    def generate(self, model: PreparedModel, request: ServerRequest, *, timed: bool = True) -> ServerReply:
        body = completion_body(model.name, request, self.schema_field)
        clock = StreamClock(self.timeout_s)
        pieces: list[str] = []
        finish: str | None = None
        usage: dict | None = None
        timings: dict | None = None
        done = False
        what = f"POST /v1/completions {model.name}"
        with self._errors(what):
            with self._http.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    text = _error_text(response)
                    if response.status_code == 404:
                        raise ModelMissing(f"{what}: {text}")
                    raise ServerError(f"{what} answered {response.status_code}: {text}")
                for line in response.iter_lines():
                    clock.check_deadline()
                    if not line.startswith("data:"):
                        continue  # blank separators, SSE comments, `event:` lines
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError:
                        raise ServerError(f"{what}: a stream chunk is not JSON: {data[:80]!r}") from None
                    if not isinstance(chunk, dict):
                        continue
                    if chunk.get("error"):
                        raise ServerError(f"{what}: the server streamed an error: {_message(chunk['error'])}")
                    for choice in chunk.get("choices") or []:
                        text = choice.get("text") or ""
                        if text:
                            pieces.append(text)
                            clock.content()
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    if isinstance(chunk.get("timings"), dict):
                        timings = chunk["timings"]
        if not done and finish is None:
            raise ServerError(f"{what}: the stream ended without a finish reason or [DONE]")
        figures: dict[str, Any] = {}
        if usage:
            figures["usage_prompt_tokens"] = _int(usage.get("prompt_tokens"))
            figures["usage_completion_tokens"] = _int(usage.get("completion_tokens"))
        if timings:
            figures["prompt_eval_count"] = _int(timings.get("prompt_n"))
            figures["prompt_eval_duration_ns"] = _ns(timings.get("prompt_ms"))
            figures["eval_count"] = _int(timings.get("predicted_n"))
            figures["eval_duration_ns"] = _ns(timings.get("predicted_ms"))
        extra = {k: v for k, v in (("usage", usage), ("timings", timings)) if v}
        return clock.reply("".join(pieces), finish, figures, extra)


def _int(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _ns(ms) -> int | None:
    return int(round(ms * 1e6)) if isinstance(ms, (int, float)) and not isinstance(ms, bool) else None


def _message(error) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200] or response.reason_phrase
    if isinstance(data, dict) and data.get("error"):
        return _message(data["error"])
    if isinstance(data, dict) and data.get("detail"):
        return str(data["detail"])[:200]
    return " ".join(response.text.split())[:200]
