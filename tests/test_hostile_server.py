"""Hostile requests to `vlmforge serve` (issues 19 and 20), on a real server on 127.0.0.1.

Every input-caused error is a 4xx in the OpenAI error shape (never a 500), web pages of other sites
cannot drive a keyless server (no CORS, JSON only, Host names checked), and big legal images cannot
pile up in memory (a pixel budget for decoding, images shrunk as soon as they are decoded).
"""

import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from PIL import Image

from vlmforge.data.images import shrink_to_side
from vlmforge.infer.host_check import allowed_host_check, host_name
from vlmforge.infer.image_urls import ImageUrlError, PixelBudget
from vlmforge.infer.serve_config import ServeConfig
from vlmforge.infer.server import BackgroundServer, create_app, keep_image_side


@pytest.fixture(scope="module")
def lively_model(lively_vlm_dir):
    from vlmforge.model.load import load

    return load(lively_vlm_dir)


@pytest.fixture(scope="module")
def server(lively_model, tiny_vlm_dir):
    config = ServeConfig(model=str(tiny_vlm_dir), max_tokens=16, allowed_hosts=["vlm.example.test"])
    with BackgroundServer(create_app(config, *lively_model)) as running:
        yield running


def request(server, body, headers=None, method="POST", path="/v1/chat/completions") -> tuple[int, dict]:
    """One raw HTTP request (any Host header, any content type); the status and the JSON answer."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    target = urlsplit(server.url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
    try:
        connection.request(method, path, body=raw if method == "POST" else None,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


def png_url(size, mode="RGB", color=90) -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------ input errors are 400, never 500
INPUT_ERRORS = [
    ("lone surrogate in text", {"messages": user("hi \ud800 there")}, "messages[0].content"),
    ("lone surrogate in a text part", {"messages": user([{"type": "text", "text": "\udfff"}])},
     "messages[0].content[0].text"),
    ("lone surrogate in stop", {"messages": user("hi"), "stop": ["\udc00"]}, "stop"),
    ("lone surrogate in an image URL", {"messages": user([{"type": "image_url", "image_url": {"url": "data:image/png,\ud800"}}])},
     "messages[0].content[0].image_url"),
    ("seed 2**70 sampled", {"messages": user("hi"), "seed": 2**70, "temperature": 1.0}, "seed"),
    ("seed 2**70 greedy", {"messages": user("hi"), "seed": 2**70}, "seed"),
    ("seed below -2**63", {"messages": user("hi"), "seed": -(2**63) - 1, "temperature": 0.5}, "seed"),
    ("stop string too long", {"messages": user("hi"), "stop": "x" * 1000}, "stop"),
]


@pytest.mark.parametrize("name, body, param", INPUT_ERRORS, ids=[row[0] for row in INPUT_ERRORS])
def test_input_errors_are_400_naming_the_field(server, name, body, param):
    status, answer = request(server, body)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-9])
def test_tiny_temperature_samples_greedily_instead_of_crashing(server, temperature):
    greedy = request(server, {"messages": user("Tell me about squares."), "max_tokens": 6})
    tiny = request(server, {"messages": user("Tell me about squares."), "max_tokens": 6, "temperature": temperature,
                            "seed": 3})
    assert tiny[0] == 200, tiny[1]
    assert tiny[1]["choices"][0]["message"]["content"] == greedy[1]["choices"][0]["message"]["content"]


def test_largest_seed_is_accepted(server):
    status, answer = request(server, {"messages": user("hi"), "max_tokens": 2, "temperature": 1.0, "seed": 2**64 - 1})
    assert status == 200, answer


# ------------------------------------------------------------------ other sites' pages cannot drive it
@pytest.mark.parametrize("content_type", ["text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_bodies_a_page_can_send_without_preflight_are_refused_415(server, content_type):
    status, answer = request(server, {"messages": user("hi"), "max_tokens": 2}, {"Content-Type": content_type})
    assert status == 415, answer
    assert answer["error"]["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_fine(server):
    status, answer = request(server, {"messages": user("hi"), "max_tokens": 2},
                             {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and answer["choices"], answer


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil"])
def test_foreign_host_names_are_refused_on_every_route(server, host):
    for method, path in [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/")]:
        status, answer = request(server, {"messages": user("hi"), "max_tokens": 2}, {"Host": host}, method, path)
        assert status == 400 and answer["error"]["code"] == "invalid_host", (path, answer)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1:80", "[::1]:8000", "vlm.example.test"])
def test_loopback_names_and_allowed_hosts_are_served(server, host):
    status, answer = request(server, {"messages": user("hi"), "max_tokens": 2}, {"Host": host})
    assert status == 200, answer


def test_host_allow_list_rules():
    assert [host_name(h) for h in ["[::1]:80", "a.b:8000", "a.b", "::1"]] == ["::1", "a.b", "a.b", "::1"]
    default = allowed_host_check(ServeConfig())
    assert default("localhost") and default("127.0.0.1") and default("::1")
    assert not default("10.0.0.5") and not default("example.com")
    everywhere = allowed_host_check(ServeConfig(host="0.0.0.0"))
    assert everywhere("10.0.0.5") and everywhere("fe80::1") and not everywhere("rebind.example")
    assert allowed_host_check(ServeConfig(host="0.0.0.0", allowed_hosts=["*"]))("rebind.example")
    assert allowed_host_check(ServeConfig(allowed_hosts=["Box.Lan"]))("box.lan.")


def test_no_cors_headers_by_default(server):
    target = urlsplit(server.url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    connection.request("OPTIONS", "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status >= 400 and response.getheader("Access-Control-Allow-Origin") is None


# ------------------------------------------------------------------ big legal images stay bounded
def test_pixel_budget_waits_for_room_and_then_refuses_busy():
    budget = PixelBudget(100, wait=0.3)
    second = budget.reserve(50)
    entered = threading.Event()
    with budget.reserve(80):
        thread = threading.Thread(target=lambda: (second.__enter__(), entered.set()))
        thread.start()
        assert not entered.wait(0.1)  # waits while 80 + 50 > 100
    thread.join(10)
    assert entered.is_set() and budget.in_use == 50 and budget.peak == 80
    with pytest.raises(ImageUrlError, match="busy"):
        with budget.reserve(60):
            pass
    second.__exit__(None, None, None)
    assert budget.in_use == 0


def test_images_are_shrunk_to_twice_the_processor_size_right_after_decoding(lively_model):
    _, processor = lively_model
    keep = keep_image_side(processor)
    assert keep == 2 * processor.image_processor.size["height"]
    shrunk = shrink_to_side(Image.new("RGB", (5000, 2500), (10, 200, 30)), keep)
    assert shrunk.size == (2 * keep, keep) and shrunk.getpixel((5, 5)) == (10, 200, 30)
    small = Image.new("RGB", (keep // 2, 2 * keep))
    assert shrink_to_side(small, keep) is small  # never enlarged
    thin = shrink_to_side(Image.new("RGB", (3, 100_000)), keep)  # a long thin one is cut too
    assert thin.size == (1, 16 * keep)
    tall = shrink_to_side(Image.new("P", (300, 5000)), keep)
    assert tall.mode == "P" and tall.width * tall.height <= 4.1 * keep**2


def test_a_big_image_answers_like_its_shrunk_copy(server, lively_model):
    from vlmforge.infer.generate import GenerationOptions, generate

    big = Image.new("RGB", (3000, 2000), (200, 40, 40))
    for x in range(0, 3000, 300):  # some structure, so that shrinking could matter
        big.paste((20, 20, 220), (x, 0, x + 100, 2000))
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = {"messages": user([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}]),
            "max_tokens": 6}
    status, answer = request(server, body)
    assert status == 200, answer
    shrunk = shrink_to_side(big, keep_image_side(lively_model[1]))
    expected = generate(*lively_model, [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]],
                        [[shrunk]], GenerationOptions(max_new_tokens=6))[0]
    assert answer["choices"][0]["message"]["content"] == expected.text


def test_concurrent_image_decodes_stay_within_the_pixel_budget(lively_model, tiny_vlm_dir):
    config = ServeConfig(model=str(tiny_vlm_dir), max_tokens=4, max_image_pixels=250_000)
    app = create_app(config, *lively_model)
    body = {"messages": user([{"type": "image_url", "image_url": {"url": png_url((500, 500), "RGBA")}}] * 3
                             + [{"type": "text", "text": "hi"}]), "max_tokens": 2}
    with BackgroundServer(app) as running, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: request(running, body), range(6)))
    assert [status for status, _ in answers] == [200] * 6
    assert 0 < app.state.pixel_budget.peak <= 250_000 and app.state.pixel_budget.in_use == 0


# The memory ceiling stated in docs/serve.md: above the idle server, at most 16 bytes per pixel of
# --max-decoding-pixels (default: --max-image-pixels, 25 M → 400 MB), whatever the number of requests.
CEILING_BYTES_PER_PIXEL = 16


def memory_mb(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM")}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak RSS from /proc")
def test_big_legal_images_keep_the_server_under_its_memory_ceiling(tiny_vlm_dir):
    """Issue 20's scenario with the shipped limits: concurrent requests of 5000x5000 RGBA PNGs (110 KB
    each on the wire, 100 MB each decoded). Before the pixel budget: +5.9 GB peak, 4.1 GB kept."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "vlmforge", "serve", str(tiny_vlm_dir), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = wait_until_up(server, f"http://127.0.0.1:{port}")
        idle = memory_mb(server.pid)["VmRSS"]
        url = png_url((5000, 5000), "RGBA", (120, 30, 60, 200))
        body = {"messages": user([{"type": "image_url", "image_url": {"url": url}}] * 2
                                 + [{"type": "text", "text": "hi"}]), "max_tokens": 2}
        target = type("Target", (), {"url": base})
        with ThreadPoolExecutor(4) as pool:
            statuses = [status for status, _ in pool.map(lambda _: request(target, body), range(4))]
        after = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert statuses == [200] * 4
    ceiling_mb = CEILING_BYTES_PER_PIXEL * ServeConfig().decoding_pixels() / 2**20
    assert after["VmHWM"] - idle < ceiling_mb, (idle, after)
    assert after["VmRSS"] - idle < 200, (idle, after)  # handed back, not kept


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(process, base: str, seconds: float = 120) -> str:
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=2).close()
            return base
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
