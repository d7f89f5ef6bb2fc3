"""Requests of the OpenAI API, checked field by field into plain values.

`parse_completion(body)` and `parse_chat(body)` turn a JSON body into a `GenRequest` or raise
APIError(400) naming the field (OpenAI's error shape).  Sampling follows llama-server: the
OpenAI fields plus `top_k`, `min_p`, `repeat_penalty`, `repeat_last_n`, `ignore_eos`; the
conversation memory is named by `session_id` (clients send it through `extra_body`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..sampling import SamplingParams
from .errors import bad_request

SESSION_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ROLES = {"system": "<|system|>", "developer": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
DEFAULTS = SamplingParams()  # llama.cpp's defaults, as python -m bitttt.infer uses them
MAX_STOPS = 16


@dataclass
class GenRequest:
    """A generation request, checked.  `prompt` (completions: text or token ids) or `messages`
    (chat: [(role, text)]); sampling holds every sampling field (max_tokens included)."""

    kind: str                                   # "chat" | "completion"
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    session_id: str | None = None
    model: str | None = None
    prompt: str | list[int] | None = None
    messages: list[tuple[str, str]] = field(default_factory=list)
    echo: bool = False
    return_token_ids: bool = False              # every streamed chunk names its token (one chunk per token)


def _num(body: dict, name: str, lo: float, hi: float, default, lo_open=False, hi_open=False, integer=False):
    v = body.get(name)
    if v is None:
        return default
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or (not integer and not math.isfinite(v)):
        raise bad_request(f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}", name,
                          "invalid_type")
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        lb, hb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise bad_request(f"'{name}' must be in {lb}{lo}, {hi}{hb}, got {v!r}", name)
    return v


def session_id_of(v, where: str = "session_id") -> str | None:
    """A session name (letters, digits, _ . -; up to 128 characters) or None."""
    if v is None or v == "":
        return None
    if not isinstance(v, str) or not SESSION_ID.match(v):
        raise bad_request(f"'{where}' must be 1-128 characters of letters, digits, '_', '.', '-' (not starting with "
                          f"'.' or '-'), got {v!r}", where)
    return v


def _common(body: dict, kind: str, max_tokens_default: int) -> GenRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_json")
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise bad_request(f"'n' must be 1: this server makes one choice per request, got {n!r} "
                          "(send n separate requests, with different seeds)", "n", "unsupported_value")
    if body.get("best_of", 1) not in (1, None):
        raise bad_request("'best_of' other than 1 is not supported", "best_of", "unsupported_value")
    for name in ("logprobs", "top_logprobs"):
        if body.get(name) not in (None, False, 0):
            raise bad_request(f"'{name}' is not supported by this server", name, "unsupported_value")
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad_request(f"'{name}' (tool calls) is not supported by this server", name, "unsupported_value")
    if body.get("logit_bias"):
        raise bad_request("'logit_bias' is not supported by this server", "logit_bias", "unsupported_value")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and rf.get("type", "text") == "text"):
        raise bad_request("'response_format' other than {\"type\": \"text\"} (JSON modes) is not supported",
                          "response_format", "unsupported_value")
    for name in ("presence_penalty", "frequency_penalty"):
        if _num(body, name, -2.0, 2.0, 0.0) != 0:
            raise bad_request(f"'{name}' is not supported (use 'repeat_penalty', as in llama.cpp)", name,
                              "unsupported_value")
    mt_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _num(body, mt_name, 1, 1 << 31, max_tokens_default, integer=True)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request(f"'seed' must be an integer, got {seed!r}", "seed", "invalid_type")
    sp = SamplingParams(
        temperature=_num(body, "temperature", 0.0, 2.0, DEFAULTS.temperature),
        top_p=_num(body, "top_p", 0.0, 1.0, DEFAULTS.top_p, lo_open=True),
        top_k=_num(body, "top_k", 0, 1 << 31, DEFAULTS.top_k, integer=True),
        min_p=_num(body, "min_p", 0.0, 1.0, DEFAULTS.min_p, hi_open=True),
        repeat_penalty=_num(body, "repeat_penalty", 0.0, 100.0, DEFAULTS.repeat_penalty, lo_open=True),
        repeat_last_n=_num(body, "repeat_last_n", -1, 1 << 31, DEFAULTS.repeat_last_n, integer=True),
        seed=-1 if seed is None else seed % (1 << 63),
        max_tokens=max_tokens)
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOPS:
        raise bad_request(f"'stop' takes at most {MAX_STOPS} strings, got {len(stops)}", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", "stream", "invalid_type")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise bad_request("'stream_options' must be an object", "stream_options", "invalid_type")
    include_usage = so.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("'stream_options.include_usage' must be true or false", "stream_options.include_usage",
                          "invalid_type")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad_request("'ignore_eos' must be true or false", "ignore_eos", "invalid_type")
    rti = body.get("return_token_ids", False)
    if not isinstance(rti, bool):
        raise bad_request("'return_token_ids' must be true or false", "return_token_ids", "invalid_type")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model", "invalid_type")
    return GenRequest(kind, sp, stream, include_usage, stops, ignore_eos, session_id_of(body.get("session_id")),
                      model, return_token_ids=rti)


def parse_completion(body: dict, max_tokens_default: int = 256) -> GenRequest:
    """POST /v1/completions: `prompt` is a string, a list of one string, or token ids."""
    r = _common(body, "completion", max_tokens_default)
    p = body.get("prompt", "")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, list):
        if not p or not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            raise bad_request("'prompt' must be a string or one list of token ids (several prompts in one request "
                              "are not supported)", "prompt", "invalid_type")
    elif not isinstance(p, str):
        raise bad_request("'prompt' must be a string or a list of token ids", "prompt", "invalid_type")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise bad_request("'echo' must be true or false", "echo", "invalid_type")
    if body.get("suffix"):
        raise bad_request("'suffix' (insertion) is not supported", "suffix", "unsupported_value")
    r.prompt, r.echo = p, echo
    return r


def _content(v, i: int) -> str:
    where = f"messages[{i}].content"
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        parts = []
        for j, part in enumerate(v):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(f"{where}[{j}]: only text parts are supported, got {kind!r}", where,
                                  "unsupported_value")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"{where} must be a string or a list of text parts", where, "invalid_type")


def parse_chat(body: dict, max_tokens_default: int = 256) -> GenRequest:
    """POST /v1/chat/completions: `messages` [{role: system|developer|user|assistant, content}]."""
    r = _common(body, "chat", max_tokens_default)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages",
                          "invalid_type" if msgs is not None else "missing_required_parameter")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                              f"messages[{i}].role")
        out.append((role, _content(m.get("content"), i)))
    r.messages = out
    return r
