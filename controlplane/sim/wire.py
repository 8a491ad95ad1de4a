"""The OpenAI completions wire format as the simulated fleet speaks it.

Request parsing with errors that name the field, the chunk and response bodies vLLM's
OpenAI server sends, SSE framing, and the stand-in tokenizer: one token per word or
punctuation mark. Replica, router and load generator share it, so a prompt the load
generator builds with N tokens is counted as N tokens by the replica.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from controlplane.errors import GovernorError

COMPLETIONS = "text_completion"
CHAT = "chat"
PATHS = {"/v1/completions": COMPLETIONS, "/v1/chat/completions": CHAT}
DONE = b"data: [DONE]\n\n"
# Who is asking and how urgent: set by clients (the load generator), forwarded by the router.
TENANT_HEADER = "x-tenant"
PRIORITY_HEADER = "x-priority"
# vLLM's chat template adds a few tokens per message (role markers, separators).
CHAT_TOKENS_PER_MESSAGE = 4
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORDS = ("the", "model", "serves", "tokens", "fast", "and", "well", "under", "load")


class BadRequest(GovernorError, ValueError):
    """The request body is not a valid completions request; the message names the field."""


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def make_prompt(tokens: int) -> str:
    """A prompt that ``count_tokens`` counts as exactly ``tokens`` tokens."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(max(0, tokens)))


def make_text(tokens: int, start: int = 0) -> str:
    """Generated text of ``tokens`` tokens (each a word with its leading space)."""
    return "".join(" " + _WORDS[(start + i) % len(_WORDS)] for i in range(tokens))


@dataclass(frozen=True)
class CompletionRequest:
    kind: str  # COMPLETIONS | CHAT
    model: str
    prompt_tokens: int
    max_tokens: int
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False
    temperature: float | None = None
    top_p: float | None = None
    user: str = ""


def _int_field(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{name} must be an integer >= 1 (got {value!r})")
    return value


def _float_field(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be a number (got {value!r})")
    return float(value)


def _prompt_tokens(kind: str, body: dict[str, Any]) -> int:
    if kind == COMPLETIONS:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return count_tokens(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            return len(prompt)  # already token ids
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            return count_tokens(prompt[0])
        raise BadRequest("prompt must be a string or a list of token ids (batches: not supported)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    total = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string role")
        content = m.get("content", "")
        if isinstance(content, list):  # content parts: count the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
        total += count_tokens(content) + CHAT_TOKENS_PER_MESSAGE
    return total


def parse_request(kind: str, raw: bytes, default_model: str) -> CompletionRequest:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    model = body.get("model", default_model)
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be a non-empty string")
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest(f"n must be 1 (got {n!r}): the simulated engine returns one choice")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean (got {stream!r})")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise BadRequest(f"ignore_eos must be a boolean (got {ignore_eos!r})")
    default_max = DEFAULT_CHAT_MAX_TOKENS if kind == CHAT else DEFAULT_COMPLETION_MAX_TOKENS
    max_tokens = _int_field(body, "max_completion_tokens", 0) if kind == CHAT else 0
    max_tokens = max_tokens or _int_field(body, "max_tokens", default_max)
    user = body.get("user", "")
    return CompletionRequest(
        kind=kind,
        model=model,
        prompt_tokens=_prompt_tokens(kind, body),
        max_tokens=max_tokens,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        ignore_eos=ignore_eos,
        temperature=_float_field(body, "temperature"),
        top_p=_float_field(body, "top_p"),
        user=user if isinstance(user, str) else "",
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _choice(kind: str, text: str, finish: str | None, first: bool, stream: bool) -> dict[str, Any]:
    if kind == COMPLETIONS:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if stream:
        delta: dict[str, Any] = {"content": text} if text or not first else {}
        if first:
            delta = {"role": "assistant", "content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish,
    }


def _object(kind: str, stream: bool) -> str:
    if kind == COMPLETIONS:
        return "text_completion"
    return "chat.completion.chunk" if stream else "chat.completion"


def chunk(
    kind: str,
    rid: str,
    model: str,
    created: int,
    text: str,
    finish: str | None = None,
    *,
    first: bool = False,
    usage_: dict[str, int] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": _object(kind, True),
        "created": created,
        "model": model,
        "choices": [_choice(kind, text, finish, first, True)],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def usage_chunk(kind: str, rid: str, model: str, created: int, u: dict[str, int]) -> dict[str, Any]:
    """The final chunk of ``stream_options.include_usage``: no choices, only usage."""
    return {
        "id": rid,
        "object": _object(kind, True),
        "created": created,
        "model": model,
        "choices": [],
        "usage": u,
    }


def response(
    kind: str, rid: str, model: str, created: int, text: str, finish: str, u: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": _object(kind, False),
        "created": created,
        "model": model,
        "choices": [_choice(kind, text, finish, False, False)],
        "usage": u,
    }


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def error_body(message: str, type_: str, code: int) -> dict[str, Any]:
    """OpenAI's error shape (vLLM sends the same)."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}
