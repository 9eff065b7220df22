// The vlmforge chat page: attach (upload, paste or drop) an image, ask, watch the answer stream in,
// continue the conversation, clear it. It speaks the same API as any client: POST
// /v1/chat/completions with "stream": true, reading the server-sent "data:" chunks until [DONE].
"use strict";

const MAX_IMAGE_SIDE = 1536; // larger pictures are scaled down in the browser before sending
const MAX_UNSCALED_BYTES = 4 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const state = { history: [], image: null, controller: null, model: undefined };

function apiHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  return headers;
}

function scrollToEnd() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function addBubble(role, text, imageUrl) {
  const bubble = document.createElement("div");
  bubble.className = "message " + role;
  if (imageUrl) {
    const img = document.createElement("img");
    img.src = imageUrl;
    img.alt = "sent image";
    bubble.appendChild(img);
  }
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  bubble.appendChild(body);
  $("messages").appendChild(bubble);
  scrollToEnd();
  return bubble;
}

function setStatus(text) {
  $("status").textContent = text;
}

// ---- images -------------------------------------------------------------------------------

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("cannot read " + file.name));
    reader.readAsDataURL(file);
  });
}

async function shrinkIfLarge(dataUrl, byteSize) {
  const img = new Image();
  img.src = dataUrl;
  await img.decode();
  const side = Math.max(img.naturalWidth, img.naturalHeight);
  if (side <= MAX_IMAGE_SIDE && byteSize <= MAX_UNSCALED_BYTES) return dataUrl;
  const scale = Math.min(1, MAX_IMAGE_SIDE / side);
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
  canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
  canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/jpeg", 0.9);
}

async function attachImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus("that is not an image");
    return;
  }
  try {
    state.image = await shrinkIfLarge(await readAsDataUrl(file), file.size);
  } catch (error) {
    setStatus("cannot use this image: " + error.message);
    return;
  }
  $("preview-img").src = state.image;
  $("image-preview").hidden = false;
  setStatus("");
}

function removeImage() {
  state.image = null;
  $("image-preview").hidden = true;
  $("preview-img").removeAttribute("src");
  $("image-input").value = "";
}

// ---- the API --------------------------------------------------------------------------------

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (ignored) { /* not JSON */ }
  return "HTTP " + response.status;
}

// Streams one answer into `target` (a text node holder); resolves to the full answer text.
async function streamAnswer(target, signal) {
  const request = {
    model: state.model || "vlmforge",
    messages: state.history,
    stream: true,
    max_tokens: parseInt($("max-tokens").value, 10) || 256,
    temperature: parseFloat($("temperature").value) || 0,
  };
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: apiHeaders(), body: JSON.stringify(request), signal,
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return answer;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return answer;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
      if (piece) {
        answer += piece;
        target.textContent = answer;
        scrollToEnd();
      }
    }
  }
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("prompt").disabled = busy;
}

async function send() {
  const text = $("prompt").value.trim();
  if (state.controller || (!text && !state.image)) return;
  const content = [];
  if (state.image) content.push({ type: "image_url", image_url: { url: state.image } });
  if (text) content.push({ type: "text", text });
  addBubble("user", text, state.image);
  state.history.push({ role: "user", content });
  $("prompt").value = "";
  removeImage();

  const bubble = addBubble("assistant", "");
  bubble.dataset.done = "false";
  state.controller = new AbortController();
  setBusy(true);
  setStatus("generating…");
  try {
    const answer = await streamAnswer(bubble.querySelector(".text"), state.controller.signal);
    state.history.push({ role: "assistant", content: answer });
    setStatus("");
  } catch (error) {
    const stopped = error.name === "AbortError";
    const partial = bubble.querySelector(".text").textContent;
    if (stopped && partial) {
      state.history.push({ role: "assistant", content: partial });
    } else {
      state.history.pop(); // the failed question is not part of the conversation
      bubble.remove();
      if (!stopped) addBubble("error", error.message);
    }
    setStatus(stopped ? "stopped" : "");
  } finally {
    bubble.dataset.done = "true";
    state.controller = null;
    setBusy(false);
    $("prompt").focus();
  }
}

function clearConversation() {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("messages").replaceChildren();
  removeImage();
  setStatus("");
}

async function applyServerLimits() {
  // The page's default answer length never exceeds what the server accepts.
  try {
    const health = await (await fetch("/health")).json();
    const input = $("max-tokens");
    if (health.max_tokens) {
      input.max = health.max_tokens;
      input.value = Math.min(parseInt(input.value, 10) || health.max_tokens, health.max_tokens);
    }
  } catch (error) {
    /* the limit check on the server still applies */
  }
}

async function showModel() {
  try {
    const response = await fetch("/v1/models", { headers: apiHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    state.model = body.data[0].id;
    $("model-name").textContent = state.model;
  } catch (error) {
    $("model-name").textContent = "(" + error.message + ")";
  }
}

// ---- wiring ---------------------------------------------------------------------------------

function firstImageFile(items) {
  for (const item of items || []) {
    const file = item.getAsFile ? (item.kind === "file" ? item.getAsFile() : null) : item;
    if (file && file.type.startsWith("image/")) return file;
  }
  return null;
}

function wire() {
  const savedKey = localStorage.getItem("vlmforge-api-key");
  if (savedKey) $("api-key").value = savedKey;
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("vlmforge-api-key", $("api-key").value.trim());
    showModel();
  });
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
  });
  $("image-input").addEventListener("change", () => attachImage($("image-input").files[0]));
  $("remove-image").addEventListener("click", removeImage);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", clearConversation);
  document.addEventListener("paste", (event) => {
    const file = firstImageFile(event.clipboardData && event.clipboardData.items);
    if (file) { event.preventDefault(); attachImage(file); }
  });
  document.addEventListener("dragover", (event) => { event.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const file = firstImageFile(event.dataTransfer && event.dataTransfer.files);
    if (file) attachImage(file);
  });
  showModel();
  applyServerLimits();
}

wire();
