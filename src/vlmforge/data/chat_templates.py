"""Chat templates: the ones vlmforge ships for tokenizers it trains itself, and the wrapper that
lets any LLM's own template render multimodal content parts.

Content parts are flattened the same way everywhere (training data, processor, server): an image
part becomes the `<image>` placeholder, and consecutive parts are joined with a newline, so
`[{"type": "image"}, {"type": "text", "text": "Hi"}]` renders exactly as the record string
`"<image>\\nHi"` that the data layer trains on. A model trained with the question *before* the
image (the demo's) gets a template built with `images_after_text=True`: a user turn's text parts
first, then its images, so every client (chat, serve, vLLM) sends the layout it was trained on.
"""

IMAGE_PLACEHOLDER = "<image>"

# Jinja pieces of `_flatten_content`: its first and last statements, and what it does with one content part `_part`.
_FLATTEN_START = "{%- set _flat = namespace(messages=[]) -%}"
_FLATTEN_END = "{%- set messages = _flat.messages -%}"
_IS_IMAGE = "_part['type'] == 'image' or _part['type'] == 'image_url'"
_ADD_IMAGE = "{%- set _text.parts = _text.parts + ['" + IMAGE_PLACEHOLDER + "'] -%}"
_ADD_TEXT = "{%- set _text.parts = _text.parts + [_part['text']] -%}"


# Jinja that turns `messages` with content parts into `messages` with string content. The parts are
# joined with newlines in the order given, or (`images_after_text`) text parts first, then image parts.
def _flatten_content(images_after_text: bool) -> str:
    if images_after_text:
        join = (
            "{%- for _part in _m['content'] if _part['type'] == 'text' -%}" + _ADD_TEXT + "{%- endfor -%}"
            "{%- for _part in _m['content'] if " + _IS_IMAGE + " -%}" + _ADD_IMAGE + "{%- endfor -%}"
        )
    else:
        join = (
            "{%- for _part in _m['content'] -%}"
            "{%- if " + _IS_IMAGE + " -%}" + _ADD_IMAGE
            + "{%- elif _part['type'] == 'text' -%}" + _ADD_TEXT + "{%- endif -%}"
            "{%- endfor -%}"
        )
    return (
        _FLATTEN_START
        + "{%- for _m in messages -%}"
        "{%- if _m['content'] is string or _m['content'] is none -%}"
        "{%- set _flat.messages = _flat.messages + [_m] -%}"
        "{%- else -%}"
        "{%- set _text = namespace(parts=[]) -%}"
        + join +
        "{%- set _flat.messages = _flat.messages + [{'role': _m['role'], 'content': _text.parts | join('\\n')}] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        + _FLATTEN_END
    )


# Qwen2 / ChatML: <|im_start|>role\ncontent<|im_end|>\n
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Llama 3: <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

CHATML_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def multimodal_chat_template(llm_template: str, images_after_text: bool = False) -> str:
    """Wrap an LLM's own chat template so it also accepts content parts (`{"type": "image"}`, ...).

    A template that is already wrapped (a tokenizer vlmforge trained, a VLM folder's) gets its wrapper
    replaced, not a second one, so the saved template carries the flattening once, in the order asked.
    """
    if llm_template.startswith(_FLATTEN_START) and _FLATTEN_END in llm_template:
        llm_template = llm_template.split(_FLATTEN_END, 1)[1]
    return _flatten_content(images_after_text) + llm_template
