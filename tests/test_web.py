"""The chat page at `/`, driven in a real headless Chromium (Debian's, through Playwright).

Upload an image, ask, see the streamed answer appear (equal to `generate` on the same model),
continue the conversation, clear it, paste an image, see a refused request shown as an error, and
see a Chinese answer drawn in real glyphs (not boxes: that needs a CJK font beside the browser).
`scripts/install-browser.sh` installs chromium, a CJK font and Playwright; without chromium the test is skipped.
"""

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from vlmforge.infer.generate import GenerationOptions, generate
from vlmforge.infer.serve_config import ServeConfig
from vlmforge.infer.server import BackgroundServer, create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MAX_TOKENS = 8

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() or shutil.which("chromium") is None,
                                reason="Debian's chromium is not installed (run scripts/install-browser.sh)")


@pytest.fixture(scope="module")
def lively_model(lively_vlm_dir):
    """The tiny VLM with random weights whose answers depend on the prompt and image (see conftest)."""
    from vlmforge.model.load import load

    return load(lively_vlm_dir)


@pytest.fixture(scope="module")
def server(lively_model, tiny_vlm_dir):
    config = ServeConfig(model=str(tiny_vlm_dir), max_tokens=32)
    with BackgroundServer(create_app(config, *lively_model)) as running:
        yield running


@pytest.fixture(scope="module")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def page(server, playwright):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    page = browser.new_page()
    page.set_default_timeout(30_000)
    yield page
    browser.close()


def answer_of(lively_model, messages, images) -> str:
    return generate(*lively_model, [messages], [images], GenerationOptions(max_new_tokens=MAX_TOKENS))[0].text


def ask(page, question: str) -> str:
    done_before = page.locator('.message.assistant[data-done="true"]').count()
    page.fill("#prompt", question)
    page.click("#send")
    page.wait_for_function(
        "n => document.querySelectorAll('.message.assistant[data-done=\"true\"]').length > n", arg=done_before)
    return page.locator(".message.assistant .text").nth(done_before).text_content()


def test_upload_ask_continue_clear(page, server, lively_model, tmp_path):
    image_path = tmp_path / "red.png"
    Image.new("RGB", (24, 16), (220, 20, 20)).save(image_path)
    sent = []
    page.on("request", lambda request: sent.append(json.loads(request.post_data))
            if request.url.endswith("/v1/chat/completions") else None)
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent === 'tiny-vlm'")
    page.click("#composer summary")  # open the settings
    page.fill("#max-tokens", str(MAX_TOKENS))

    page.set_input_files("#image-input", str(image_path))
    page.wait_for_selector("#image-preview:not([hidden])")
    first = ask(page, "What colour is it?")
    image = Image.open(image_path).convert("RGB")
    first_turn = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}
    assert first and first == answer_of(lively_model, [first_turn], [image])
    assert page.locator(".message.user img").count() == 1
    assert page.locator("#image-preview").is_hidden()  # the image went with the question
    assert sent[0]["stream"] is True and sent[0]["max_tokens"] == MAX_TOKENS
    assert sent[0]["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")

    second = ask(page, "And its shape?")
    history = [first_turn, {"role": "assistant", "content": first}, {"role": "user", "content": [
        {"type": "text", "text": "And its shape?"}]}]
    assert second == answer_of(lively_model, history, [image])
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]

    page.click("#clear")
    assert page.locator(".message").count() == 0
    third = ask(page, "Hello?")
    assert third == answer_of(lively_model, [{"role": "user", "content": [{"type": "text", "text": "Hello?"}]}], [])
    assert len(sent[2]["messages"]) == 1


def test_pasted_image_is_attached_and_refusals_are_shown(page, server):
    page.goto(server.url + "/")
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), (0, 0, 255)).save(buffer, "PNG")
    page.evaluate("""bytes => {
        const file = new File([new Uint8Array(bytes)], 'pasted.png', {type: 'image/png'});
        const data = new DataTransfer();
        data.items.add(file);
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data}));
    }""", list(buffer.getvalue()))
    page.wait_for_selector("#image-preview:not([hidden])")
    page.click("#composer summary")
    assert page.input_value("#max-tokens") == "32"  # the page follows the server's limit (from /health)
    page.fill("#max-tokens", "1000")  # over the server's limit of 32: the server refuses it
    page.fill("#prompt", "What is it?")
    page.press("#prompt", "Enter")
    error = page.wait_for_selector(".message.error")
    assert "max_tokens must be between 1 and 32" in error.text_content()
    assert page.locator(".message.assistant").count() == 0  # the failed turn is not kept


FETCH_CHAT = """async (api) => {
  try {
    const response = await fetch(api + "/v1/chat/completions", {method: "POST",
      headers: {"Authorization": "Bearer k", "Content-Type": "application/json"},
      body: JSON.stringify({model: "m", messages: [{role: "user", content: "hi"}], max_tokens: 2})});
    return [response.status, (await response.json()).choices.length];
  } catch (error) { return ["blocked", String(error)]; }
}"""


def test_a_page_from_another_origin_calls_the_api_only_when_allowed(page, lively_model, tiny_vlm_dir):
    """`--cors-origins`: Chromium itself runs the preflight and enforces the answer."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    site = Starlette(routes=[Route("/", lambda request: HTMLResponse("<!doctype html><title>app</title>"))])
    with BackgroundServer(site) as other_origin:
        allowed = ServeConfig(model=str(tiny_vlm_dir), api_key="k", web=False, cors_origins=[other_origin.url])
        closed = ServeConfig(model=str(tiny_vlm_dir), api_key="k", web=False)
        with BackgroundServer(create_app(allowed, *lively_model)) as open_api, \
                BackgroundServer(create_app(closed, *lively_model)) as closed_api:
            page.goto(other_origin.url + "/")
            assert page.evaluate(FETCH_CHAT, open_api.url) == [200, 1]
            status, reason = page.evaluate(FETCH_CHAT, closed_api.url)
            assert status == "blocked" and "Failed to fetch" in reason


# [distinct characters, distinct drawings] of an element's text, each character drawn alone in the
# element's font. Characters without a glyph in any installed font are all drawn as the same box.
GLYPHS = """selector => {
  const element = document.querySelector(selector);
  const characters = [...new Set(element.textContent.replace(/\\s/g, ""))];
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 48;
  const context = canvas.getContext("2d");
  context.font = "32px " + getComputedStyle(element).fontFamily;
  const drawings = characters.map(character => {
    context.clearRect(0, 0, 48, 48);
    context.fillText(character, 4, 38);
    return context.getImageData(0, 0, 48, 48).data.join(",");
  });
  return [characters.length, new Set(drawings).size];
}"""
CHINESE_QUESTION, CHINESE_ANSWER = "三角形是什么颜色？", "红色的三角形在左上角"


def chinese_font_installed() -> bool:
    found = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True)
    return found.returncode == 0 and bool(found.stdout.strip())


def test_a_chinese_answer_is_drawn_in_real_glyphs(page, server):
    if not chinese_font_installed():
        pytest.skip("no Chinese font installed (scripts/install-browser.sh installs fonts-wqy-microhei)")
    body = "".join(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
                   for piece in (CHINESE_ANSWER[:4], CHINESE_ANSWER[4:])) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions",
               lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    try:
        page.goto(server.url + "/")
        assert ask(page, CHINESE_QUESTION) == CHINESE_ANSWER
    finally:
        page.unroute("**/v1/chat/completions")
    for selector, text in ((".message.assistant .text", CHINESE_ANSWER), (".message.user .text", CHINESE_QUESTION)):
        assert page.evaluate(GLYPHS, selector) == [len(set(text))] * 2, selector


def test_without_a_chinese_font_the_glyph_check_sees_boxes(playwright, tmp_path):
    """The check above can fail: a browser that sees only a Latin font draws every Chinese character alike."""
    latin = subprocess.run(["fc-match", "-f", "%{file}", "DejaVu Sans"], capture_output=True, text=True).stdout
    if not latin.endswith(".ttf"):
        pytest.skip("DejaVu Sans is not installed")
    config = tmp_path / "fonts.conf"
    config.write_text(f"<?xml version='1.0'?><fontconfig><dir>{Path(latin).parent}</dir>"
                      f"<cachedir>{tmp_path / 'cache'}</cachedir></fontconfig>")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                                         env={**os.environ, "FONTCONFIG_FILE": str(config)})
    try:
        page = browser.new_page()
        page.set_content(f"<p style='font: 15px system-ui, sans-serif'>{CHINESE_ANSWER}</p><p>abc</p>")
        assert page.evaluate(GLYPHS, "p") == [len(set(CHINESE_ANSWER)), 1]
        assert page.evaluate(GLYPHS, "p + p") == [3, 3]
    finally:
        browser.close()
