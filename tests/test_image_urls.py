"""Image URLs a client sends: data: URLs decoded with caps; http(s) refused by default and, when
enabled, refused for loopback / private / link-local hosts before any connection is made.

No external network traffic: the only server is a local one on 127.0.0.1, reached only by tests
that explicitly allow loopback.
"""

import base64
import http.server
import io
import ipaddress
import threading
import time

import pytest
from PIL import Image

from vlmforge.data.images import ImageError
from vlmforge.infer.image_urls import (ImageUrlError, ImageUrlLimits, decode_data_url, fetch_remote_image,
                                       is_public_address, load_image_url)


def png_bytes(size=(12, 8), color=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type="image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


class LocalSite:
    """A tiny HTTP server on 127.0.0.1 with fixed routes: path -> (status, headers, body, delay)."""

    def __init__(self, routes):
        self.routes, self.hits = routes, []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                site.hits.append(self.path)
                status, headers, body, delay = site.routes.get(self.path, (404, {}, b"", 0))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value.replace("PORT", str(site.port)))
                self.end_headers()
                try:
                    for start in range(0, len(body), 1024):
                        time.sleep(delay)
                        self.wfile.write(body[start:start + 1024])
                except ConnectionError:  # the client gave up (size or time cap): expected
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def loopback_only(address) -> bool:
    """Stands in for 'public' in tests: lets the local site through, nothing else."""
    return address.is_loopback


REMOTE = ImageUrlLimits(allow_remote=True, timeout=5.0)


def test_data_url_decodes_to_rgb_image():
    image = load_image_url(data_url(png_bytes((12, 8))), ImageUrlLimits())
    assert image.size == (12, 8) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (10, 200, 30)


def test_data_url_without_base64_and_with_whitespace():
    raw = png_bytes()
    encoded = base64.b64encode(raw).decode()
    spaced = "data:image/png;base64," + "\n".join(encoded[i:i + 20] for i in range(0, len(encoded), 20))
    assert decode_data_url(spaced, 10_000) == raw
    assert decode_data_url("data:,hello%20world", 100) == b"hello world"


@pytest.mark.parametrize("url, code", [
    ("data:image/png;base64,@@@@", "invalid_image_url"),
    ("data:image/png;base64", "invalid_image_url"),
    ("data:text/html;base64,PGI+", "invalid_image_url"),
    ("file:///etc/passwd", "invalid_image_url"),
    ("ftp://example.com/a.png", "invalid_image_url"),
    ("http://example.com/a.png", "remote_images_disabled"),
])
def test_bad_or_disabled_urls_are_refused(url, code):
    with pytest.raises(ImageUrlError) as caught:
        load_image_url(url, ImageUrlLimits())
    assert caught.value.code == code


def test_data_url_over_the_byte_limit_is_refused_before_decoding():
    with pytest.raises(ImageUrlError) as caught:
        decode_data_url(data_url(b"x" * 5000), max_bytes=1000)
    assert caught.value.code == "image_too_large"


def test_pixel_bomb_and_garbage_are_image_errors():
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, "PNG")  # compresses to a few KB, 9 megapixels
    with pytest.raises(ImageError) as caught:
        load_image_url(data_url(buffer.getvalue()), ImageUrlLimits(max_pixels=1_000_000))
    assert caught.value.kind == "oversized"
    with pytest.raises(ImageError) as caught:
        load_image_url(data_url(b"certainly not an image"), ImageUrlLimits())
    assert caught.value.kind == "undecodable"


@pytest.mark.parametrize("address, public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False),
    ("8.8.8.8", True), ("1.1.1.1", True), ("2606:4700:4700::1111", True),
])
def test_public_address_check(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]", "localhost",
                                  "2130706433", "0.0.0.0", "[::ffff:127.0.0.1]"])
def test_non_public_hosts_are_refused_without_connecting(host):
    with LocalSite({"/a.png": (200, {}, png_bytes(), 0)}) as site:
        port = site.port if host in ("127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]") else 80
        with pytest.raises(ImageUrlError) as caught:
            load_image_url(f"http://{host}:{port}/a.png", REMOTE)
        assert caught.value.code == "forbidden_image_host"
        assert site.hits == []  # refused before any request was sent


def test_fetch_follows_checked_redirects_only():
    routes = {
        "/a.png": (200, {"Content-Type": "image/png"}, png_bytes((7, 5)), 0),
        "/same-host": (302, {"Location": "/a.png"}, b"", 0),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"", 0),
        "/loop": (302, {"Location": "/loop"}, b"", 0),
    }
    with LocalSite(routes) as site:
        image = load_image_url(f"{site.url}/same-host", REMOTE, address_allowed=loopback_only)
        assert image.size == (7, 5)
        with pytest.raises(ImageUrlError) as caught:
            fetch_remote_image(f"{site.url}/to-metadata", REMOTE, address_allowed=loopback_only)
        assert caught.value.code == "forbidden_image_host"
        with pytest.raises(ImageUrlError, match="redirects"):
            fetch_remote_image(f"{site.url}/loop", REMOTE, address_allowed=loopback_only)
        with pytest.raises(ImageUrlError, match="HTTP 404"):
            fetch_remote_image(f"{site.url}/missing", REMOTE, address_allowed=loopback_only)


def test_fetch_caps_bytes_and_time():
    routes = {
        "/big": (200, {}, b"x" * 50_000, 0),  # no Content-Length: the cap applies while reading
        "/declared": (200, {"Content-Length": "999999999"}, b"", 0),
        "/slow": (200, {}, b"x" * 8192, 0.3),
    }
    with LocalSite(routes) as site:
        small = ImageUrlLimits(max_bytes=10_000, allow_remote=True, timeout=5.0)
        for path in ("/big", "/declared"):
            with pytest.raises(ImageUrlError) as caught:
                fetch_remote_image(site.url + path, small, address_allowed=loopback_only)
            assert caught.value.code == "image_too_large"
        started = time.monotonic()
        with pytest.raises(ImageUrlError) as caught:
            fetch_remote_image(site.url + "/slow", ImageUrlLimits(allow_remote=True, timeout=0.8),
                               address_allowed=loopback_only)
        assert caught.value.code == "image_fetch_failed"
        assert time.monotonic() - started < 2.0


def test_a_hanging_name_lookup_counts_against_the_time_cap(monkeypatch):
    import socket

    def hanging_getaddrinfo(*args, **kwargs):
        time.sleep(3.0)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    started = time.monotonic()
    with pytest.raises(ImageUrlError, match="resolving image host 'slow.example' took more than") as caught:
        fetch_remote_image("http://slow.example/a.png", ImageUrlLimits(allow_remote=True, timeout=0.5))
    assert caught.value.code == "image_fetch_failed"
    assert time.monotonic() - started < 1.5


def test_https_goes_through_tls_to_the_checked_address():
    with LocalSite({"/a.png": (200, {}, png_bytes(), 0)}) as site:  # speaks plain HTTP: the TLS handshake fails
        with pytest.raises(ImageUrlError) as caught:
            fetch_remote_image(f"https://127.0.0.1:{site.port}/a.png", REMOTE, address_allowed=loopback_only)
        assert caught.value.code == "image_fetch_failed"
        assert "SSL" in str(caught.value)
