"""The OpenAI chat-completions schema, as the server reads and writes it.

`parse_chat_request(body, limits)` checks a decoded JSON body and turns it into a `ChatRequest`:
messages in the form `generate` takes (string or `{"type": "image"}` / `{"type": "text"}` parts),
the image URLs in order (with the JSON path of each, for error messages), and `GenerationOptions`.
Every problem is a `RequestError` that the server answers as
`{"error": {"message", "type", "param", "code"}}` with a 4xx status. The `*_response` / `*_chunk`
builders write the answers (plain, and server-sent-event chunks).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.errors import VlmforgeError
from vlmforge.infer.chat import sampling_temperature
from vlmforge.infer.generate import Completion, GenerationOptions

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes
CHARS_PER_TOKEN_BOUND = 32  # a prompt this many times longer (in chars) than the token limit is refused unread


class RequestError(VlmforgeError):
    """A request the server refuses; `status` is the HTTP code, the rest is the OpenAI error shape."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return error_body(str(self), self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class RequestLimits:
    max_images: int = 8
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024
    default_max_tokens: int = 256


@dataclass
class ImageRef:
    url: str
    param: str  # JSON path, e.g. "messages[0].content[1].image_url"


@dataclass
class ChatRequest:
    messages: list[dict]
    images: list[ImageRef]
    options: GenerationOptions
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    request_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


def parse_chat_request(body, limits: RequestLimits) -> ChatRequest:
    """Validate a chat-completions body; raises `RequestError` naming the offending field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", code="invalid_json")
    messages, images = _parse_messages(body.get("messages"), limits)
    stream = _optional_bool(body, "stream", False)
    return ChatRequest(
        messages=messages,
        images=images,
        options=_parse_options(body, limits),
        stream=stream,
        include_usage=stream and _include_usage(body.get("stream_options")),
        model=body.get("model") if isinstance(body.get("model"), str) else None,
    )


def _parse_messages(raw, limits: RequestLimits) -> tuple[list[dict], list[ImageRef]]:
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    messages, images = [], []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", param=where)
        role = ROLES.get(message.get("role"))
        if role is None:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}", param=f"{where}.role")
        content = _parse_content(message.get("content"), role, where, images)
        messages.append({"role": role, "content": content})
    if len(images) > limits.max_images:
        raise RequestError(f"{len(images)} images in the request; this server takes at most {limits.max_images}",
                           param="messages", code="too_many_images")
    text_length = sum(_text_length(m["content"]) for m in messages)
    if text_length > limits.max_prompt_tokens * CHARS_PER_TOKEN_BOUND:
        raise RequestError(f"the prompt is far longer than the limit of {limits.max_prompt_tokens} tokens",
                           param="messages", code="context_length_exceeded")
    return messages, images


def _parse_content(content, role: str, where: str, images: list[ImageRef]):
    if isinstance(content, str):
        return _checked_text(content, f"{where}.content")
    if not isinstance(content, list) or not content:
        raise RequestError(f"{where}.content must be a string or a non-empty list of parts", param=f"{where}.content")
    parts = []
    for index, part in enumerate(content):
        part_where = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _checked_text(part.get("text"), f"{part_where}.text")})
        elif kind == "image_url":
            if role != "user":
                raise RequestError(f"{part_where}: only user messages can carry images", param=part_where)
            images.append(ImageRef(_image_url(part, part_where), f"{part_where}.image_url"))
            parts.append({"type": "image"})
        else:
            raise RequestError(f"{part_where} must be a part of type 'text' or 'image_url'", param=f"{part_where}.type")
    return parts


def _checked_text(text, where: str) -> str:
    if not isinstance(text, str):
        raise RequestError(f"{where} must be a string", param=where)
    _check_unicode(text, where)
    if IMAGE_PLACEHOLDER in text:
        raise RequestError(f"{where} contains '{IMAGE_PLACEHOLDER}'; send images as image_url parts", param=where)
    return text


def _check_unicode(text: str, where: str) -> None:
    """JSON's `\\ud800` escapes give strings with lone surrogates, which no tokenizer or encoder takes."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RequestError(f"{where} is not valid Unicode (a lone surrogate {text[error.start]!a} at "
                               f"character {error.start})", param=where) from None


def _image_url(part: dict, where: str) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise RequestError(f"{where}.image_url must be an object with a 'url' string", param=f"{where}.image_url")
    _check_unicode(url, f"{where}.image_url")
    return url


def _text_length(content) -> int:
    if isinstance(content, str):
        return len(content)
    return sum(len(part.get("text", "")) for part in content)


def _parse_options(body: dict, limits: RequestLimits) -> GenerationOptions:
    if body.get("n") not in (None, 1):
        raise RequestError("only n=1 is supported", param="n")
    max_tokens_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _optional_int(body, max_tokens_key, min(limits.default_max_tokens, limits.max_tokens))
    if not 1 <= max_tokens <= limits.max_tokens:
        raise RequestError(f"{max_tokens_key} must be between 1 and {limits.max_tokens}, got {max_tokens}",
                           param=max_tokens_key, code="max_tokens_exceeded")
    temperature = sampling_temperature(_optional_number(body, "temperature", 0.0, low=0.0, high=2.0))
    top_p = _optional_number(body, "top_p", 1.0, low=0.0, high=1.0)
    if top_p == 0.0:
        raise RequestError("top_p must be greater than 0", param="top_p")
    seed = body.get("seed")
    if seed is not None:
        seed = _optional_int(body, "seed", 0)
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise RequestError(f"'seed' must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}", param="seed")
    return GenerationOptions(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                             seed=seed, stop=_parse_stop(body.get("stop")))


def _parse_stop(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise RequestError(f"'stop' takes at most {MAX_STOP_STRINGS} strings", param="stop")
    if any(len(s) > MAX_STOP_LENGTH for s in stops):
        raise RequestError(f"a 'stop' string is longer than {MAX_STOP_LENGTH} characters", param="stop")
    for s in stops:
        _check_unicode(s, "stop")
    return stops


def _optional_bool(body: dict, key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false", param=key)
    return value


def _optional_int(body: dict, key: str, default: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{key}' must be an integer", param=key)
    return value


def _optional_number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"'{key}' must be a number", param=key)
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low:g} and {high:g}, got {value}", param=key)
    return float(value)


def _include_usage(stream_options) -> bool:
    return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(request: ChatRequest, model_name: str, completion: Completion) -> dict:
    """The `chat.completion` object for a finished, non-streamed request."""
    return {
        "id": request.request_id,
        "object": "chat.completion",
        "created": request.created,
        "model": model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": completion.text},
            "logprobs": None,
            "finish_reason": completion.finish_reason,
        }],
        "usage": usage(completion.prompt_tokens, completion.completion_tokens),
    }


def completion_chunk(request: ChatRequest, model_name: str, delta: dict | None = None,
                     finish_reason: str | None = None, usage_counts: dict | None = None) -> dict:
    """One `chat.completion.chunk`; a usage-only chunk (delta None, usage given) has no choices."""
    chunk = {"id": request.request_id, "object": "chat.completion.chunk", "created": request.created,
             "model": model_name, "choices": []}
    if delta is not None:
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    if request.include_usage:
        chunk["usage"] = usage_counts
    return chunk
