"""Build a tiny VLM with vlmforge and record what transformers generates for it (run in vlmforge's .venv).

    .venv/bin/python scripts/engines/make_reference.py OUT_DIR [siglip|clip|idefics3]

Writes OUT_DIR/model (a folder written by vlmforge's export path), OUT_DIR/image.png and
OUT_DIR/reference.json: the prompt text, its token ids, and the greedy token ids transformers
generates. `vllm_check.py` then asks vLLM for the same thing. Shapes suit vLLM's CPU kernels
(head size 64 in the LLM, 32 in the tower); weights are re-drawn so answers depend on the image.
idefics3: a SigLIP + Llama model built with `--arch idefics3 --pixel-shuffle 2` (vLLM's Idefics3 always
builds a Llama text model); tiles of 32 px, longest edge 64, so the 64 x 48 image is 2 x 2 tiles + a global view.
"""

import json
import sys
from pathlib import Path

NEW_TOKENS = 12
QUESTION = "What is in this picture?"


def make_image(path: Path):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 48), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, 4, 30, 26), fill=(220, 30, 30))
    draw.ellipse((34, 18, 60, 44), fill=(20, 60, 220))
    image.save(path)
    return image


def make_model(out: Path, kind: str) -> Path:
    import torch

    from vlmforge.model.build import BuildConfig, build_vlm
    from vlmforge.model.tiny import make_tiny_llm, make_tiny_vision
    from vlmforge.train.export import export_model

    tower = "clip" if kind == "clip" else "siglip"
    vision = make_tiny_vision(out / "parts" / tower, tower, image_size=32, patch_size=8, hidden_size=64,
                              num_attention_heads=2)
    llm_kind = "qwen2" if kind == "siglip" else "llama"
    llm = make_tiny_llm(out / "parts" / llm_kind, llm_kind, hidden_size=128, num_attention_heads=2,
                        num_key_value_heads=1)
    arch = {"arch": "idefics3", "pixel_shuffle": 2} if kind == "idefics3" else {}
    model, processor = build_vlm(BuildConfig(vision=str(vision), llm=str(llm), **arch))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return export_model(model, processor, out / "model")


def reference(folder: Path, image) -> dict:
    import torch

    from vlmforge.model.load import load

    model, processor = load(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                output_scores=True, return_dict_in_generate=True)
    new_ids = output.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    margins = [float(scores[0].topk(2).values.diff().abs()) for scores in output.scores]  # top-1 minus top-2 logit
    return {"prompt": prompt, "question": QUESTION, "prompt_ids": inputs["input_ids"][0].tolist(),
            "greedy_ids": new_ids, "greedy_text": processor.tokenizer.decode(new_ids, skip_special_tokens=True),
            "top2_margins": margins}


def main() -> None:
    out = Path(sys.argv[1])
    tower = sys.argv[2] if len(sys.argv) > 2 else "siglip"
    out.mkdir(parents=True, exist_ok=True)
    image = make_image(out / "image.png")
    folder = make_model(out, tower)
    (out / "reference.json").write_text(json.dumps(reference(folder, image), indent=1))
    print(f"{tower}: wrote {folder} and {out / 'reference.json'}")


if __name__ == "__main__":
    main()
