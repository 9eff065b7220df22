"""Image URLs a client sends (`data:` always; `http(s)` only when enabled) → decoded PIL images.

    image = load_image_url("data:image/png;base64,iVBOR...", ImageUrlLimits())

Remote fetching is guarded against server-side request forgery: the host is resolved and every
address it resolves to must be public (no loopback, private, link-local, multicast, reserved or
unspecified address, IPv4-mapped IPv6 included); the connection goes to the checked address (so
DNS cannot change its answer in between); each redirect is checked the same way; the size and the
total time are capped, name resolution included (a lookup runs in a small thread pool and is given
up at the deadline: `getaddrinfo` itself cannot be interrupted). Decoding goes through
`vlmforge.data.images` (`load_image_shrunk`), the same guarded loader training uses (decompression bombs,
truncated files); a `PixelBudget` bounds the pixels being decoded at once, and each image is shrunk
to what the processor needs as soon as it is decoded, so big legal uploads cannot pile up in memory.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

from vlmforge.data.images import DEFAULT_MAX_PIXELS, load_image_shrunk
from vlmforge.errors import DataError

REDIRECT_CODES = (301, 302, 303, 307, 308)
READ_CHUNK = 64 * 1024
LARGE_IMAGE_PIXELS = 4_000_000  # after decoding one this large, freed memory is handed back to the OS
_MALLOC_TRIM = None
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vlmforge-dns")  # bounds stuck lookups


class ImageUrlError(DataError):
    """An image URL that cannot be used; `code` is a short machine-readable reason."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


@dataclass
class ImageUrlLimits:
    max_bytes: int = 10_000_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_remote: bool = False
    timeout: float = 10.0  # seconds for a whole remote fetch, redirects included
    max_redirects: int = 3


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for globally routable unicast addresses."""
    mapped = getattr(address, "ipv4_mapped", None) or getattr(address, "sixtofour", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def load_image_url(url: str, limits: ImageUrlLimits,
                   address_allowed: Callable[[object], bool] = is_public_address,
                   budget: PixelBudget | None = None, keep_side: int = 0):
    """Fetch or decode one image URL into an RGB PIL image; raises `ImageUrlError` / `ImageError`.

    With a `budget`, the decode waits until its pixels fit in it; with `keep_side`, the image is shrunk
    right after decoding so that its shorter side is `keep_side` (never enlarged)."""
    data = image_url_bytes(url, limits, address_allowed)
    budget = budget or PixelBudget(limits.max_pixels)
    with budget.reserve(header_pixels(data, limits.max_pixels)):
        return load_image_shrunk(data, keep_side, max_pixels=limits.max_pixels)


def image_url_bytes(url: str, limits: ImageUrlLimits,
                    address_allowed: Callable[[object], bool] = is_public_address) -> bytes:
    """The encoded image a URL carries (data:) or points to (http(s), when allowed)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = decode_data_url(url, limits.max_bytes)
    elif scheme in ("http", "https"):
        if not limits.allow_remote:
            raise ImageUrlError("http(s) image URLs are disabled on this server; send the image as a data: URL",
                                "remote_images_disabled")
        data = fetch_remote_image(url, limits, address_allowed)
    else:
        raise ImageUrlError("an image URL must be a data: URL (or http(s) where the server allows it)",
                            "invalid_image_url")
    return data


class PixelBudget:
    """Pixels being decoded at this moment, all requests together: what bounds the server's image memory.

    A decode reserves its image's pixel count (read from the header, before any pixel is decoded) and
    waits while the budget is full; after `wait` seconds the request is refused as busy (429)."""

    def __init__(self, capacity: int, wait: float = 60.0):
        self.capacity, self.wait = capacity, wait
        self.in_use = self.peak = 0
        self._room = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int):
        pixels = min(pixels, self.capacity)
        with self._room:
            if not self._room.wait_for(lambda: self.in_use + pixels <= self.capacity, timeout=self.wait):
                raise ImageUrlError("the server is busy decoding other images; retry shortly", "server_busy")
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._room:
                self.in_use -= pixels
                self._room.notify_all()
            if pixels >= LARGE_IMAGE_PIXELS:  # its full-size copies are freed by now
                return_freed_memory()


def header_pixels(data: bytes, max_pixels: int) -> int:
    """Width x height from the image header (no pixel decoded); 0 when the loader will refuse it anyway."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            width, height = Image.open(io.BytesIO(data)).size
    except Exception:  # undecodable: `load_image` says why, without decoding pixels
        return 0
    return width * height if 0 < width * height <= max_pixels else 0


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps large freed blocks otherwise); no-op elsewhere."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a `data:[<type>][;base64],<payload>` URL, refused when over `max_bytes`."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise ImageUrlError("malformed data: URL (no comma before the payload)", "invalid_image_url")
    media_type, *params = header[len("data:"):].split(";")
    if media_type and not media_type.lower().startswith(("image/", "application/octet-stream")):
        raise ImageUrlError(f"data: URL of type {media_type!r} is not an image", "invalid_image_url")
    if "base64" not in (p.lower() for p in params):
        data = unquote_to_bytes(payload)
    else:
        payload = "".join(payload.split())
        if len(payload) * 3 // 4 > max_bytes + 2:
            raise _too_large(len(payload) * 3 // 4, max_bytes)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageUrlError("data: URL payload is not valid base64", "invalid_image_url") from None
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)
    return data


def _too_large(size: int, max_bytes: int) -> ImageUrlError:
    return ImageUrlError(f"image of {size} bytes is larger than the limit of {max_bytes} bytes", "image_too_large")


def fetch_remote_image(url: str, limits: ImageUrlLimits,
                       address_allowed: Callable[[object], bool] = is_public_address) -> bytes:
    """GET an http(s) URL from public addresses only, following checked redirects; bytes and time capped."""
    deadline = time.monotonic() + limits.timeout
    for _ in range(limits.max_redirects + 1):
        target = _parse_remote_url(url)
        address = resolve_allowed_address(target.hostname, target.port, address_allowed, _remaining(deadline))
        connection = _pinned_connection(target, address, _remaining(deadline))
        try:
            response = _get(connection, target)
            if response.status in REDIRECT_CODES and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                continue
            if response.status != 200:
                raise ImageUrlError(f"fetching the image failed: HTTP {response.status}", "image_fetch_failed")
            return _read_capped(response, connection, limits.max_bytes, deadline)
        except (OSError, http.client.HTTPException) as error:
            raise ImageUrlError(f"fetching the image failed: {type(error).__name__}: {error}",
                                "image_fetch_failed") from None
        finally:
            connection.close()
    raise ImageUrlError(f"more than {limits.max_redirects} redirects", "image_fetch_failed")


@dataclass
class _Target:
    scheme: str
    hostname: str
    port: int
    path: str


def _parse_remote_url(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ImageUrlError(f"malformed image URL: {error}", "invalid_image_url") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ImageUrlError("redirected to a URL that is not http(s) with a host", "invalid_image_url")
    if parts.username or parts.password:
        raise ImageUrlError("image URLs with credentials are refused", "invalid_image_url")
    default_port = 443 if parts.scheme.lower() == "https" else 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme.lower(), parts.hostname, port or default_port, path)


def resolve_allowed_address(hostname: str, port: int, address_allowed: Callable[[object], bool] = is_public_address,
                            timeout: float | None = None) -> str:
    """Resolve `hostname` within `timeout` seconds; every address must be allowed (else `ImageUrlError`);
    returns the first."""
    lookup = _RESOLVER.submit(socket.getaddrinfo, hostname, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=timeout)
    except FutureTimeout:
        raise ImageUrlError(f"resolving image host {hostname!r} took more than {timeout:.1f}s",
                            "image_fetch_failed") from None
    except (socket.gaierror, UnicodeError) as error:
        raise ImageUrlError(f"cannot resolve image host {hostname!r}: {error}", "image_fetch_failed") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    refused = [str(a) for a in addresses if not address_allowed(a)]
    if refused or not addresses:
        raise ImageUrlError(f"image host {hostname!r} resolves to a non-public address ({', '.join(refused)}); refused",
                            "forbidden_image_host")
    return str(addresses[0])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to an already checked address, with the URL's host name in the Host header."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = self.pinned_sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an already checked address; the certificate is verified for the URL's host name."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.pinned_sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _pinned_connection(target: _Target, address: str, timeout: float):
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    return kind(target.hostname, address, target.port, timeout)


def _get(connection, target: _Target):
    connection.request("GET", target.path, headers={"User-Agent": "vlmforge", "Accept": "image/*"})
    return connection.getresponse()


def _read_capped(response, connection, max_bytes: int, deadline: float) -> bytes:
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks, size = [], 0
    while True:
        # http.client lets go of `connection.sock` once the response owns the stream; ours stays
        connection.pinned_sock.settimeout(_remaining(deadline))
        chunk = response.read1(READ_CHUNK)  # returns what has arrived, so the deadline is checked often
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ImageUrlError("fetching the image took too long", "image_fetch_failed")
    return left
