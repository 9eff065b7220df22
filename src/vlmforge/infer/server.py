"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) and the chat web page.

    vlmforge serve my-vlm --port 8000          # the CLI
    serve(ServeConfig(model="my-vlm"))         # the same from Python
    with BackgroundServer(create_app(config, model, processor)) as server:   # tests, notebooks
        requests.get(server.url + "/health")

Routes: `POST /v1/chat/completions` (plain or streamed as server-sent events), `GET /v1/models`,
`GET /health`, and the chat page at `/`. Requests are parsed by `openai_schema`, images decoded by
`image_urls` (in the thread pool, so a slow one blocks nobody), and generation runs on the single
`ModelWorker` thread. Every refusal is a 4xx JSON body in the OpenAI error shape. Pages of other
sites cannot drive it: no CORS unless asked, JSON bodies only (415), Host names checked (`host_check`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from vlmforge.infer.image_urls import ImageUrlError, ImageUrlLimits, PixelBudget, load_image_url
from vlmforge.errors import VlmforgeError
from vlmforge.infer.model_worker import Job, ModelWorker, PromptTooLong, QueueFull, WorkerClosed
from vlmforge.infer.openai_schema import (ChatRequest, RequestError, RequestLimits, completion_chunk,
                                          completion_response, error_body, parse_chat_request, usage)
from vlmforge.infer.host_check import HostHeaderCheck, allowed_host_check
from vlmforge.infer.serve_config import LOOPBACK_HOSTS, ServeConfig

logger = logging.getLogger(__name__)

WEB_FILES = {"/": ("index.html", "text/html"), "/static/chat.js": ("chat.js", "text/javascript"),
             "/static/chat.css": ("chat.css", "text/css")}
SIDE_KEYS = (None, "height", "width", "shortest_edge", "longest_edge")  # None: the size is a bare int
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def serve(config: ServeConfig) -> None:
    """Load the model and serve it until interrupted."""
    from vlmforge.model.load import load
    from vlmforge.utils.device import resolve_device

    config.validate()
    model, processor = load(config.model, dtype=config.dtype, device=resolve_device(config.device))
    if config.host not in LOOPBACK_HOSTS and not config.api_key:
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", config.host)
    logger.info("serving %s at http://%s:%d (chat page at /)", config.model_name(), config.host, config.port)
    uvicorn.run(create_app(config, model, processor), host=config.host, port=config.port, log_level="info")


def create_app(config: ServeConfig, model, processor):
    """The FastAPI app serving `model`; its worker thread starts and stops with the app."""
    config.validate()
    worker = ModelWorker(model, processor, config.max_batch_size, config.max_queue, config.max_prompt_tokens)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="vlmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if config.cors_origins:
        _allow_cross_origin_pages(app, config.cors_origins)
    app.add_middleware(HostHeaderCheck, allowed=allowed_host_check(config))
    _add_error_handlers(app)
    _add_api_routes(app, config, worker, keep_image_side(processor))
    if config.web:
        _add_web_routes(app)
    return app


def _allow_cross_origin_pages(app, origins: list[str]) -> None:
    """Browsers let pages from `origins` call the API (preflight answered before the API key is checked,
    as browsers send none there); no cookies are involved, so no credentials mode."""
    from fastapi.middleware.cors import CORSMiddleware

    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "Content-Type"], max_age=600)


def keep_image_side(processor) -> int:
    """Twice the largest side the image processor resizes or crops to: uploads are shrunk to that at once.
    0 (keep every image whole) when the processor does not say."""
    image_processor = getattr(processor, "image_processor", processor)
    sides = []
    for attribute in ("size", "crop_size"):
        value = getattr(image_processor, attribute, None)  # an int, a dict or a transformers SizeDict
        for key in SIDE_KEYS:
            side = value if key is None else value.get(key) if isinstance(value, dict) else getattr(value, key, None)
            if isinstance(side, int) and not isinstance(side, bool):
                sides.append(side)
    return 2 * max(sides) if sides else 0


def _add_api_routes(app, config: ServeConfig, worker: ModelWorker, keep_side: int = 0) -> None:
    name = config.model_name()
    limits = RequestLimits(config.max_images, config.max_prompt_tokens, config.max_tokens, config.default_max_tokens)
    image_limits = ImageUrlLimits(config.max_image_bytes, config.max_image_pixels, config.allow_remote_images,
                                  config.remote_image_timeout)
    decoding = ImageDecoding(image_limits, PixelBudget(config.decoding_pixels()), keep_side)
    app.state.pixel_budget = decoding.budget
    started = int(time.time())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "waiting": len(worker.queue), "max_tokens": config.max_tokens}

    @app.get("/v1/models")
    async def models(request: Request):
        check_api_key(request, config.api_key)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "vlmforge"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_api_key(request, config.api_key)
        chat = parse_chat_request(await read_json_body(request, config.max_request_bytes), limits)
        images = await run_in_threadpool(load_images, chat, decoding)
        events = JobEvents(asyncio.get_running_loop())
        job = Job(chat.messages, images, chat.options, chat.stream, events.emit)
        try:
            worker.submit(job)
        except VlmforgeError as error:
            raise request_error(error) from None
        try:
            await events.expect("admitted")
            if chat.stream:
                return StreamingResponse(sse_events(chat, name, job, events), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return JSONResponse(completion_response(chat, name, await events.expect("done")))
        except BaseException:
            job.cancelled.set()
            raise


def request_error(error: BaseException) -> RequestError:
    """The HTTP answer to an error of the model worker: a vlmforge error is the request's (4xx, 429, 503),
    anything else a bug (500, logged by the worker, its details not sent)."""
    if isinstance(error, RequestError):
        return error
    if isinstance(error, QueueFull):
        return RequestError(str(error), status=429, kind="rate_limit_error", code="queue_full")
    if isinstance(error, WorkerClosed):
        return RequestError(str(error), status=503, kind="server_error")
    if isinstance(error, PromptTooLong):
        return RequestError(str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, VlmforgeError):
        return RequestError(str(error))
    return RequestError(f"generation failed: {type(error).__name__}", status=500, kind="server_error")


class JobEvents:
    """Carries a job's events from the worker thread into the request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def emit(self, event: tuple[str, object]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (server shutting down): nobody is listening
            pass

    async def next(self) -> tuple[str, object]:
        kind, value = await self.queue.get()
        if kind == "error":
            raise request_error(value)
        return kind, value

    async def expect(self, wanted: str):
        kind, value = await self.next()
        if kind != wanted:
            raise RuntimeError(f"worker sent {kind!r}, expected {wanted!r}")
        return value


async def sse_events(chat: ChatRequest, name: str, job: Job, events: JobEvents):
    """The streamed answer as OpenAI chunks: role, content pieces, finish reason, [usage], [DONE]."""
    try:
        yield _sse(completion_chunk(chat, name, {"role": "assistant", "content": ""}))
        while True:
            try:
                kind, value = await events.next()
            except RequestError as error:
                yield _sse(error.body())
                break
            if kind == "text":
                yield _sse(completion_chunk(chat, name, {"content": value}))
            elif kind == "done":
                yield _sse(completion_chunk(chat, name, {}, finish_reason=value.finish_reason))
                if chat.include_usage:
                    yield _sse(completion_chunk(chat, name, usage_counts=usage(value.prompt_tokens,
                                                                                value.completion_tokens)))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # a client that left stops the generation


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def check_api_key(request, api_key: str | None) -> None:
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise RequestError("missing or incorrect API key (send it as 'Authorization: Bearer KEY')",
                           code="invalid_api_key", status=401)


async def read_json_body(request, max_bytes: int):
    """The request body parsed as JSON; not declared as JSON → 415, too large → 413, not JSON → 400.

    Browsers send `text/plain` and form bodies to other sites without asking (no CORS preflight);
    refusing every type but JSON keeps a page the user visits from driving a keyless server."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise RequestError(f"the request body must be sent as Content-Type: application/json, not "
                           f"{media_type or 'without a type'}", code="unsupported_media_type", status=415)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _body_too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _body_too_large(max_bytes)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise RequestError("the request body is not valid JSON", code="invalid_json") from None


def _body_too_large(max_bytes: int) -> RequestError:
    return RequestError(f"the request body is larger than {max_bytes} bytes", code="request_too_large", status=413)


@dataclass
class ImageDecoding:
    """How the server turns image URLs into images: limits, the shared pixel budget, the side kept."""

    limits: ImageUrlLimits
    budget: PixelBudget
    keep_side: int = 0


def load_images(chat: ChatRequest, decoding: ImageDecoding) -> list:
    """Decode (or fetch) every image of a request, in order; a bad one is a 400 naming its part."""
    from vlmforge.data.images import ImageError

    images = []
    for ref in chat.images:
        try:
            images.append(load_image_url(ref.url, decoding.limits, budget=decoding.budget,
                                         keep_side=decoding.keep_side))
        except ImageUrlError as error:
            if error.code == "server_busy":
                raise RequestError(str(error), code=error.code, status=429, kind="rate_limit_error") from None
            raise RequestError(str(error), param=ref.param, code=error.code) from None
        except ImageError as error:
            code = "image_too_large" if error.kind == "oversized" else "invalid_image"
            raise RequestError(f"{error.kind} image: {error.detail}", param=ref.param, code=code) from None
    return images


def _add_error_handlers(app) -> None:
    kinds = {401: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error"}

    async def refused(request, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status)

    async def http_error(request, error: HTTPException):
        body = error_body(str(error.detail), kinds.get(error.status_code, "invalid_request_error"))
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    async def crashed(request, error: Exception):
        logger.exception("unexpected error serving %s", request.url.path, exc_info=error)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    app.add_exception_handler(RequestError, refused)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, crashed)


def _add_web_routes(app) -> None:
    web = resources.files("vlmforge.infer").joinpath("web")

    def page_route(file_name: str, media_type: str):
        async def page():
            content = web.joinpath(file_name).read_bytes()
            return Response(content, media_type=media_type, headers=PAGE_SECURITY_HEADERS)
        return page

    for path, (file_name, media_type) in WEB_FILES.items():
        app.add_api_route(path, page_route(file_name, media_type), methods=["GET"], include_in_schema=False)


class BackgroundServer:
    """Run an app with uvicorn in a thread on a free port; `url` says where (tests, notebooks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0):
        self.app, self.host, self.port, self.startup_timeout = app, host, port, startup_timeout
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
