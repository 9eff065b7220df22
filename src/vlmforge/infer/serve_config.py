"""`ServeConfig`: every setting of `vlmforge serve`, one dataclass; the CLI flags are generated from it.

Kept apart from the server so `vlmforge serve --help` imports neither FastAPI nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmforge.config import option
from vlmforge.utils.device import DEVICE_HELP

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    model: str = option("", "model folder to serve (what `vlmforge build` / `export` wrote)")
    host: str = option("127.0.0.1", "address to bind; 0.0.0.0 exposes the server to the network")
    port: int = option(8000, "port to listen on (0: any free port)", ge=0, le=65535)
    api_key: str | None = option(None, "require this Bearer token on /v1 (default: env VLMFORGE_API_KEY, else none)")
    served_model_name: str | None = option(None, "model id shown by /v1/models (default: the folder name)")
    dtype: str | None = option(None, "torch dtype to load the weights in, e.g. bfloat16 (default: as saved)")
    device: str | None = option(None, DEVICE_HELP)
    web: bool = option(True, "serve the chat page at /")
    cors_origins: list[str] = option(help="origins whose web pages may call the API (CORS), e.g. https://app.example.com, "
                                          "or * for any; default: none (same-origin only)", factory=list)
    allow_remote_images: bool = option(False, "fetch http(s) image URLs (public addresses only); data: URLs always work")
    remote_image_timeout: float = option(10.0, "seconds allowed to fetch one remote image", gt=0)
    max_image_bytes: int = option(10_000_000, "largest encoded image accepted, in bytes", ge=1)
    max_image_pixels: int = option(25_000_000, "largest image accepted, in pixels (width x height)", ge=1)
    max_images: int = option(8, "most images in one request (the whole conversation)", ge=0)
    max_prompt_tokens: int = option(4096, "longest prompt accepted, in tokens, image tokens included", ge=1)
    max_tokens: int = option(1024, "largest max_tokens a request may ask for", ge=1)
    default_max_tokens: int = option(256, "max_tokens when a request gives none", ge=1)
    max_batch_size: int = option(8, "most queued requests with equal settings generated together", ge=1)
    max_queue: int = option(64, "most requests waiting at once; more are answered 429", ge=1)
    max_request_bytes: int = option(64_000_000, "largest request body accepted, in bytes", ge=1)
    max_decoding_pixels: int | None = option(None, "most image pixels being decoded at once, all requests together "
                                             "(bounds memory: each image is shrunk to what the processor needs "
                                             "right after decoding); default: --max-image-pixels", ge=1)
    allowed_hosts: list[str] = option(help="host names clients may reach the server by (Host header), besides the "
                                           "loopback names and --host; * for any (behind a proxy); stops DNS "
                                           "rebinding pages", factory=list)

    def validate(self) -> None:
        """Checks between fields (each field's range is checked when the config is read)."""
        from vlmforge.config import check_config
        from vlmforge.errors import ConfigError

        check_config(self)
        if self.decoding_pixels() < self.max_image_pixels:
            raise ConfigError(f"max_decoding_pixels ({self.max_decoding_pixels}) must be >= max_image_pixels "
                              f"({self.max_image_pixels}), or the largest allowed image could never be decoded")

    def decoding_pixels(self) -> int:
        return self.max_decoding_pixels or self.max_image_pixels

    def model_name(self) -> str:
        from pathlib import Path

        return self.served_model_name or Path(self.model.rstrip("/\\")).name or "vlmforge"
