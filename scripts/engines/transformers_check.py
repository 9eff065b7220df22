"""Load a vlmforge folder with another transformers release and compare with reference.json.

    PYTHONPATH=.venv-engines-tf4 .venv-engines/bin/python scripts/engines/transformers_check.py OUT_DIR

Written for transformers 4.x (no vlmforge import): `AutoModelForImageTextToText` (the folder's Llava
or Idefics3 class) must load the folder without missing or unexpected keys, `AutoProcessor` + its chat
template must give the prompt ids of reference.json (made with the pinned transformers 5), and greedy
generation the same ids.
"""

import json
import sys
from pathlib import Path


def check(name: str, got, expected) -> bool:
    same = list(got) == list(expected)
    print(f"{'OK  ' if same else 'FAIL'} {name}" + ("" if same else f": got {list(got)} vs {list(expected)}"))
    return same


def main() -> None:
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = Path(sys.argv[1])
    ref = json.loads((out / "reference.json").read_text())
    model, info = AutoModelForImageTextToText.from_pretrained(out / "model", output_loading_info=True)
    name = f"transformers {transformers.__version__}"
    ok = check(f"{name} loading report (missing, unexpected, mismatched keys)",
               [key for value in info.values() for key in value], [])
    processor = AutoProcessor.from_pretrained(out / "model")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ref["question"]}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[Image.open(out / "image.png").convert("RGB")], return_tensors="pt")
    inputs.pop("token_type_ids", None)  # some 4.x tokenizers return it; Llava's generate refuses it
    ok &= check(f"{name} prompt ids (folder's processor and chat template)", inputs["input_ids"][0].tolist(),
                ref["prompt_ids"])
    with torch.no_grad():
        output = model.eval().generate(**inputs, do_sample=False, max_new_tokens=len(ref["greedy_ids"]),
                                       min_new_tokens=len(ref["greedy_ids"]))
    ok &= check(f"{name} greedy ids", output[0, inputs["input_ids"].shape[1]:].tolist(), ref["greedy_ids"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
