"""`vlmforge serve`: a real server on 127.0.0.1 (free port) answering the official `openai` client.

The model is the tiny test VLM with its weights re-drawn larger, so that different prompts and
images give different (random but deterministic) greedy answers; every answer the server gives is
compared with `generate` called directly on the same model.
"""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from PIL import Image

from vlmforge.infer.generate import GenerationOptions, generate
from vlmforge.infer.model_worker import Job, JobQueue
from vlmforge.infer.serve_config import ServeConfig
from vlmforge.infer.server import BackgroundServer, create_app

LIMITS = dict(max_images=2, max_prompt_tokens=120, max_tokens=32, max_image_bytes=50_000,
              max_image_pixels=250_000, max_request_bytes=300_000)


def png_data_url(size=(24, 16), color=(200, 30, 30), mode="RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def decode_data_url(url: str):
    from vlmforge.data.images import load_image

    return load_image(base64.b64decode(url.split(",", 1)[1]))


def image_message(text: str, url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def lively_model(lively_vlm_dir):
    """The tiny VLM with random weights whose answers depend on the prompt and image (see conftest)."""
    from vlmforge.model.load import load

    return load(lively_vlm_dir)


@pytest.fixture(scope="module")
def server(lively_model, tiny_vlm_dir):
    config = ServeConfig(model=str(tiny_vlm_dir), **LIMITS)
    with BackgroundServer(create_app(config, *lively_model)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def reference(lively_model, messages, images, max_tokens=8):
    """What `generate` answers for the same conversation, greedy."""
    return generate(*lively_model, [messages], [images], GenerationOptions(max_new_tokens=max_tokens))[0]


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_plain_completion_with_image_matches_generate(client, lively_model):
    url = png_data_url()
    messages = [image_message("What is in the picture?", url)]
    answer = client.chat.completions.create(model="tiny-vlm", messages=messages, max_tokens=8)
    expected = reference(lively_model, [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                         "text": "What is in the picture?"}]}], [decode_data_url(url)])
    assert answer.object == "chat.completion" and answer.model == "tiny-vlm"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason == expected.finish_reason
    assert answer.usage.prompt_tokens == expected.prompt_tokens
    assert answer.usage.completion_tokens == expected.completion_tokens
    assert answer.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


def test_streamed_completion_with_image_equals_plain(client):
    messages = [{"role": "system", "content": "Be brief."}, image_message("Describe it.", png_data_url(color=(0, 90, 250)))]
    plain = client.chat.completions.create(model="tiny-vlm", messages=messages, max_tokens=10)
    chunks = list(client.chat.completions.create(model="tiny-vlm", messages=messages, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == plain.choices[0].message.content
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert len({chunk.id for chunk in chunks}) == 1


def test_stream_ends_with_done_marker(server):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_conversation_continues_with_earlier_turns(client, lively_model):
    url = png_data_url(color=(20, 160, 20))
    first = client.chat.completions.create(model="m", messages=[image_message("Hi?", url)], max_tokens=6)
    history = [image_message("Hi?", url), {"role": "assistant", "content": first.choices[0].message.content},
               {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model="m", messages=history, max_tokens=6)
    expected = reference(lively_model, [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And then?"}], [decode_data_url(url)], max_tokens=6)
    assert second.choices[0].message.content == expected.text


def test_stop_strings_and_seeded_sampling(client):
    messages = [{"role": "user", "content": "Tell me about squares."}]
    full = client.chat.completions.create(model="m", messages=messages, max_tokens=12).choices[0].message.content
    stop = full[3:5]
    stopped = client.chat.completions.create(model="m", messages=messages, max_tokens=12, stop=[stop])
    assert stopped.choices[0].message.content == full[:full.find(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=1.0, seed=7,
                                              top_p=0.9).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_models_and_health(server, client):
    assert [model.id for model in client.models.list()] == ["tiny-vlm"]
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def test_concurrent_requests_equal_the_same_requests_alone(client):
    colors = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (120, 120, 120)]
    requests = [dict(messages=[image_message(f"Question {i}: what colour?", png_data_url(color=color))],
                     max_tokens=8, stream=i % 3 == 0) for i, color in enumerate(colors)]
    requests += [dict(messages=[{"role": "user", "content": "What is a triangle? " * (i + 1)}], max_tokens=8,
                      stream=False) for i in range(4)]

    def ask(request):
        if request["stream"]:
            chunks = client.chat.completions.create(model="m", messages=request["messages"],
                                                    max_tokens=request["max_tokens"], stream=True)
            return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        answer = client.chat.completions.create(model="m", messages=request["messages"], max_tokens=request["max_tokens"])
        return answer.choices[0].message.content

    alone = [ask(request) for request in requests]
    assert len(set(alone)) >= len(requests) // 2  # the answers really differ, so mixing them would show
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        together = list(pool.map(ask, requests))
    assert together == alone


def test_job_queue_batches_equal_settings_and_keeps_streams_alone():
    greedy, longer = GenerationOptions(max_new_tokens=8), GenerationOptions(max_new_tokens=9)
    sampled = GenerationOptions(max_new_tokens=8, temperature=1.0, seed=3)
    jobs = [Job([], [], options, stream, emit=lambda event: None) for options, stream in
            [(greedy, False), (longer, False), (greedy, True), (greedy, False), (sampled, False), (greedy, False)]]
    queue = JobQueue(max_size=10)
    for job in jobs:
        queue.put(job)
    assert queue.take_batch(2) == [jobs[0], jobs[3]]
    assert queue.take_batch(8) == [jobs[1]]
    assert queue.take_batch(8) == [jobs[2]]
    assert queue.take_batch(8) == [jobs[4]]
    assert queue.take_batch(8) == [jobs[5]]
    queue.close()
    assert queue.take_batch(8) is None


def big_noise_png_url(side: int) -> str:
    import random

    rng = random.Random(0)
    image = Image.frombytes("RGB", (side, side), bytes(rng.randrange(256) for _ in range(side * side * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


BAD_REQUESTS = [
    ("not json", b"{'messages': oops", 400, None, "invalid_json"),
    ("not an object", b"[1, 2]", 400, None, "invalid_json"),
    ("no messages", {"model": "m"}, 400, "messages", None),
    ("bad role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", None),
    ("bad part", {"messages": user([{"type": "video", "video": "x"}])}, 400, "messages[0].content[0].type", None),
    ("text not a string", {"messages": user([{"type": "text", "text": 3}])}, 400, "messages[0].content[0].text", None),
    ("placeholder in text", {"messages": user("look: <image>")}, 400, "messages[0].content", None),
    ("image_url without url", {"messages": user([{"type": "image_url", "image_url": {}}])}, 400,
     "messages[0].content[0].image_url", None),
    ("too many images", {"messages": user([{"type": "image_url", "image_url": {"url": png_data_url()}}] * 3)},
     400, "messages", "too_many_images"),
    ("undecodable image", {"messages": user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                              + base64.b64encode(b"GIF89a broken").decode()}}])},
     400, "messages[0].content[0].image_url", "invalid_image"),
    ("too many pixels", {"messages": user([{"type": "image_url", "image_url": {"url": png_data_url((600, 600), 0, "L")}}])},
     400, "messages[0].content[0].image_url", "image_too_large"),
    ("too many bytes", {"messages": user([{"type": "image_url", "image_url": {"url": big_noise_png_url(150)}}])},
     400, "messages[0].content[0].image_url", "image_too_large"),
    ("remote image disabled", {"messages": user([{"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}}])},
     400, "messages[0].content[0].image_url", "remote_images_disabled"),
    ("prompt too long", {"messages": user("square circle " * 80)}, 400, "messages", "context_length_exceeded"),
    ("max_tokens too large", {"messages": user("hi"), "max_tokens": 33}, 400, "max_tokens", "max_tokens_exceeded"),
    ("max_tokens not int", {"messages": user("hi"), "max_tokens": "8"}, 400, "max_tokens", None),
    ("temperature out of range", {"messages": user("hi"), "temperature": 5}, 400, "temperature", None),
    ("n > 1", {"messages": user("hi"), "n": 2}, 400, "n", None),
    ("body too large", {"messages": user("x" * 400_000)}, 413, None, "request_too_large"),
]


@pytest.mark.parametrize("name, body, status, param, code", BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS])
def test_bad_requests_get_openai_errors_and_the_server_carries_on(server, client, name, body, status, param, code):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got_status, answer = post(server.url + "/v1/chat/completions", raw)
    assert got_status == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]
    assert (answer["error"]["param"], answer["error"]["code"]) == (param, code)
    good = client.chat.completions.create(model="m", messages=user("hi"), max_tokens=3)
    assert good.usage.completion_tokens >= 1


def test_openai_client_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=user("hi"), max_tokens=1000)
    assert caught.value.status_code == 400 and caught.value.body["param"] == "max_tokens"


def test_client_leaving_a_stream_does_not_hurt_the_server(server, client):
    body = {"model": "m", "messages": user("Talk for a long time."), "max_tokens": 32, "stream": True}
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    response = urllib.request.urlopen(request, timeout=60)
    assert response.readline().startswith(b"data: ")
    response.close()
    answer = client.chat.completions.create(model="m", messages=user("hi"), max_tokens=3)
    assert answer.choices[0].message.content is not None


def test_unknown_route_is_an_openai_style_404(server):
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(server.url + "/v1/nothing-here", timeout=10)
    assert caught.value.code == 404
    assert json.loads(caught.value.read())["error"]["type"] == "not_found_error"


def cors_headers(url: str, origin: str, method: str = "OPTIONS") -> tuple[int, dict]:
    headers = {"Origin": origin}
    if method == "OPTIONS":
        headers.update({"Access-Control-Request-Method": "POST",
                        "Access-Control-Request-Headers": "authorization,content-type"})
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}


def test_cross_origin_pages_only_when_allowed(server, guarded_server):
    chat = "/v1/chat/completions"
    status, headers = cors_headers(guarded_server.url + chat, "http://app.example")
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    assert "authorization" in headers["access-control-allow-headers"].lower()
    status, headers = cors_headers(guarded_server.url + chat, "http://evil.example")
    assert status == 400 and "access-control-allow-origin" not in headers
    status, headers = cors_headers(guarded_server.url + "/health", "http://app.example", method="GET")
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    status, headers = cors_headers(server.url + "/health", "http://app.example", method="GET")
    assert status == 200 and "access-control-allow-origin" not in headers  # default: same origin only


@pytest.fixture(scope="module")
def guarded_server(lively_model, tiny_vlm_dir):
    config = ServeConfig(model=str(tiny_vlm_dir), api_key="s3cret", allow_remote_images=True,
                         remote_image_timeout=2.0, cors_origins=["http://app.example"], **LIMITS)
    with BackgroundServer(create_app(config, *lively_model)) as running:
        yield running


def test_api_key_is_required_when_set(guarded_server):
    def make(key):
        return openai.OpenAI(base_url=guarded_server.url + "/v1", api_key=key, max_retries=0, timeout=60)

    for wrong in ("wrong", "s3cret-not"):
        with pytest.raises(openai.AuthenticationError) as caught:
            make(wrong).chat.completions.create(model="m", messages=user("hi"), max_tokens=2)
        assert caught.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            make(wrong).models.list()
    status, answer = post(guarded_server.url + "/v1/chat/completions", json.dumps({"messages": user("hi")}).encode())
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert make("s3cret").chat.completions.create(model="m", messages=user("hi"), max_tokens=2).choices
    with urllib.request.urlopen(guarded_server.url + "/health", timeout=10) as response:
        assert response.status == 200


@pytest.mark.parametrize("url", ["http://127.0.0.1/a.png", "http://10.1.2.3:8080/a.png",
                                 "http://169.254.169.254/latest/meta-data/", "http://[::1]/a.png",
                                 "https://localhost/a.png"])
def test_remote_images_to_private_addresses_are_refused(guarded_server, url):
    body = {"messages": user([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}])}
    status, answer = post(guarded_server.url + "/v1/chat/completions", json.dumps(body).encode(),
                          {"Authorization": "Bearer s3cret"})
    assert status == 400
    assert answer["error"]["code"] == "forbidden_image_host"
    assert answer["error"]["param"] == "messages[0].content[0].image_url"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_serves_with_api_key_from_the_environment(tiny_vlm_dir):
    port = free_port()
    env = {**os.environ, "VLMFORGE_API_KEY": "from-env", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vlmforge", "serve", str(tiny_vlm_dir), "--port", str(port), "--max-tokens", "4"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[bytes] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, b"".join(output).decode()
                time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + "/v1/models", timeout=10)
        assert caught.value.code == 401
        keyed = urllib.request.Request(base + "/v1/models", headers={"Authorization": "Bearer from-env"})
        with urllib.request.urlopen(keyed, timeout=10) as response:
            assert json.loads(response.read())["data"][0]["id"] == "tiny-vlm"
        status, answer = post(base + "/v1/chat/completions", json.dumps({"messages": user("hi")}).encode(),
                              {"Authorization": "Bearer from-env"})
        assert status == 200 and answer["usage"]["completion_tokens"] <= 4
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_cli_missing_model_folder_exits_2(tmp_path):
    from vlmforge.cli import main

    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
