"""FLOPs of one training step, counted from the model's shapes and the batch's token counts.

    shape = ModelShape.from_model(model, lora_rank=16)    # LoRA's targets found as training finds them
    flops = training_flops(shape, StepTokens(lengths=(310, 250), images=2, trained_tokens=120))

The 6·N·T rule assumes every weight gets a gradient. With a frozen base only what is computed is
counted: forward 2·N·T for every weight touched; backward 2·N·T of input gradients through the
LLM (and through the vision tower only when it is trained); 2·N·T of weight gradients for the
trainable weights only (LoRA, projector). Attention adds 4·head_dim·heads per query-key pair and
layer forward (QKᵀ and AV; causal in the LLM: T(T+1)/2 pairs; all P² pairs in the vision tower),
twice that backward. The LM head runs only where the loss needs it (trained positions), unless
`logits_on_all` (the plain `labels=` path, full logits). Norms, activations and softmax are left out.

Idefics3 (`--arch idefics3`) counts the same way per tile: the tower runs on every real tile (a
padding tile is skipped by the model, so it is not counted), and the connector maps each s×s block
of a tile's patch features (s = pixel shuffle) with one linear layer, so the LLM gets patches/s²
tokens per tile.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmforge.train.trainability import language_linear_names


@dataclass(frozen=True)
class ModelShape:
    """The sizes FLOPs depend on: a Llava model (vision tower → MLP projector → decoder LLM) or an Idefics3
    model (tower on each tile → pixel shuffle + one linear → decoder LLM), with LoRA."""

    image_size: int
    patch_size: int
    channels: int
    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()  # leaf names of the decoder linears with LoRA (q_proj, ...)
    connector: str = "mlp"  # "mlp" (Llava: Linear → GELU → Linear) or "pixel_shuffle" (Idefics3)
    scale: int = 1  # pixel shuffle: s×s patches become one LLM token (Idefics3's scale_factor)

    @classmethod
    def from_model(cls, model, lora_rank: int = 0, target_modules=()) -> ModelShape:
        """The shape of a model in memory (peft-wrapped or not); LoRA on `lora_target_names(model, target_modules)`."""
        return cls.from_llava_config(model.config, lora_rank, lora_target_names(model, target_modules))

    @classmethod
    def from_llava_config(cls, config, lora_rank: int = 0, lora_targets=()) -> ModelShape:
        """The shape a Llava or Idefics3 `config` describes (Idefics3: `image_size` is a tile); without
        `lora_targets`, LoRA goes where training would put it (`config_lora_targets`: every linear of the
        language model)."""
        vision, text = config.vision_config, config.text_config
        shuffle = getattr(config, "model_type", "") == "idefics3"
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return cls(image_size=vision.image_size, patch_size=vision.patch_size, channels=getattr(vision, "num_channels", 3),
                   vision_hidden=vision.hidden_size, vision_layers=vision.num_hidden_layers,
                   vision_intermediate=vision.intermediate_size, hidden=text.hidden_size, layers=text.num_hidden_layers,
                   heads=text.num_attention_heads, kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
                   head_dim=head_dim, intermediate=text.intermediate_size, vocab=text.vocab_size,
                   lora_rank=lora_rank,
                   lora_targets=tuple(lora_targets or (config_lora_targets(config) if lora_rank else ())),
                   connector="pixel_shuffle" if shuffle else "mlp", scale=config.scale_factor if shuffle else 1)

    @property
    def patches(self) -> int:
        """Patches the tower reads per image (Llava) or per tile (Idefics3)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens_per_view(self) -> int:
        """LLM tokens per image (Llava) or per tile (Idefics3: patches / s²), layout tokens aside."""
        return self.patches // self.scale**2

    def llm_linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        d, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}

    @property
    def llm_linear_params(self) -> int:
        """Weights of the decoder layers' linear layers (no embeddings, no LM head)."""
        return self.layers * sum(a * b for a, b in self.llm_linear_shapes().values())

    @property
    def lora_params(self) -> int:
        shapes = self.llm_linear_shapes()
        per_layer = sum(self.lora_rank * sum(shapes[name]) for name in self.lora_targets if name in shapes)
        return self.layers * per_layer

    @property
    def vision_layer_params(self) -> int:
        dv, iv = self.vision_hidden, self.vision_intermediate
        return self.vision_layers * (4 * dv * dv + 2 * dv * iv)

    @property
    def patch_embed_params(self) -> int:
        return self.channels * self.patch_size**2 * self.vision_hidden

    @property
    def projector_params(self) -> int:
        if self.connector == "pixel_shuffle":  # one Linear(s²·dv → d), no bias
            return self.scale**2 * self.vision_hidden * self.hidden
        return self.vision_hidden * self.hidden + self.hidden * self.hidden


def lora_target_names(model, target_modules=()) -> tuple[str, ...]:
    """The language model's linears LoRA covers, as training chooses them (`trainability.lora_target_regex`):
    those that already hold adapters in a peft-wrapped model, else `target_modules`, else every linear."""
    wrapped = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    return tuple(sorted(wrapped) or target_modules or language_linear_names(model))


def config_lora_targets(config) -> tuple[str, ...]:
    """`language_linear_names` of the model `config` describes, built on the meta device with one layer per
    tower (the names do not depend on depth): nothing allocated, milliseconds even for a 7B config."""
    import copy

    import torch
    from transformers import AutoModelForImageTextToText

    shallow = copy.deepcopy(config)
    for part in (shallow.text_config, shallow.vision_config):
        part.num_hidden_layers = 1
        if getattr(part, "layer_types", None):
            part.layer_types = part.layer_types[:1]
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(shallow)
    return tuple(language_linear_names(model))


@dataclass(frozen=True)
class StepTokens:
    """What one step computes on: each row's tokens, the images, and the positions the loss trains."""

    lengths: tuple[int, ...]  # tokens per row (real tokens, or the padded row length)
    images: int  # images the tower reads (Llava), or tiles (Idefics3: global views included)
    trained_tokens: int


@dataclass(frozen=True)
class FlopCount:
    forward: float
    backward: float
    six_n_t: float  # the 6·N·T rule of thumb, for comparison

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.forward + other.forward, self.backward + other.backward, self.six_n_t + other.six_n_t)


def causal_pairs(lengths) -> int:
    """Query-key pairs a causal attention computes: Σ T(T+1)/2."""
    return sum(length * (length + 1) // 2 for length in lengths)


def vision_flops(shape: ModelShape, images: int, trained: bool) -> tuple[float, float]:
    """(forward, backward) of the vision tower; no backward when it is frozen."""
    tokens = images * shape.patches
    attention = shape.vision_layers * 4 * shape.vision_hidden * images * shape.patches**2
    forward = 2 * (shape.vision_layer_params + shape.patch_embed_params) * tokens + attention
    if not trained:
        return forward, 0.0
    weight_grads = 2 * (shape.vision_layer_params + shape.patch_embed_params) * tokens
    input_grads = 2 * shape.vision_layer_params * tokens + 2 * attention  # none into the pixels
    return forward, weight_grads + input_grads


def projector_flops(shape: ModelShape, images: int, vision_trained: bool) -> tuple[float, float]:
    """(forward, backward) of the projector on `images` images (Llava) or tiles (Idefics3)."""
    tokens = images * shape.tokens_per_view
    forward = 2 * shape.projector_params * tokens
    if shape.connector == "pixel_shuffle":  # one linear: input gradients only towards a trained tower
        input_grads = 2 * shape.projector_params * tokens if vision_trained else 0
        return forward, 2 * shape.projector_params * tokens + input_grads
    input_grads = 2 * shape.hidden * shape.hidden * tokens  # into linear_2's input, for linear_1's weights
    if vision_trained:
        input_grads += 2 * shape.vision_hidden * shape.hidden * tokens
    return forward, 2 * shape.projector_params * tokens + input_grads


def llm_flops(shape: ModelShape, lengths) -> tuple[float, float]:
    """(forward, backward) of the decoder layers: frozen base + LoRA, input gradients all the way down."""
    tokens = sum(lengths)
    weights = shape.llm_linear_params + shape.lora_params
    attention = shape.layers * 4 * shape.head_dim * shape.heads * causal_pairs(lengths)
    forward = 2 * weights * tokens + attention
    backward = 2 * weights * tokens + 2 * attention + 2 * shape.lora_params * tokens
    return forward, backward


def training_flops(shape: ModelShape, step: StepTokens, vision_trained: bool = False,
                   logits_on_all: bool = False) -> FlopCount:
    """FLOPs of one training step (projector + LoRA trained; the vision tower too when `vision_trained`)."""
    vision = vision_flops(shape, step.images, vision_trained)
    projector = projector_flops(shape, step.images, vision_trained)
    llm = llm_flops(shape, step.lengths)
    head_positions = sum(step.lengths) if logits_on_all else step.trained_tokens
    head = 2 * shape.hidden * shape.vocab * head_positions  # forward; its input gradient costs the same
    forward = vision[0] + projector[0] + llm[0] + head
    backward = vision[1] + projector[1] + llm[1] + head
    patches, image_tokens = step.images * shape.patches, step.images * shape.tokens_per_view
    six_n_t = (6 * (shape.llm_linear_params + shape.lora_params + shape.hidden * shape.vocab) * sum(step.lengths)
               + 6 * (shape.vision_layer_params + shape.patch_embed_params) * patches
               + 6 * shape.projector_params * image_tokens)
    return FlopCount(float(forward), float(backward), float(six_n_t))


def batch_step_tokens(micro_batches, padded: bool = False) -> StepTokens:
    """The `StepTokens` of a step's collated micro-batches (`input_ids`, `attention_mask`, `labels`, `pixel_values`);
    its `images` are tiles for Idefics3."""
    from vlmforge.data.tokenize import IGNORE_INDEX

    lengths, images, trained = [], 0, 0
    for batch in micro_batches:
        if batch is None:
            continue
        mask = batch["attention_mask"]  # (B, T)
        lengths += [mask.shape[1]] * mask.shape[0] if padded else mask.sum(dim=1).tolist()
        trained += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        images += vision_inputs(batch.get("pixel_values"))
    return StepTokens(tuple(int(length) for length in lengths), images, trained)


def vision_inputs(pixel_values) -> int:
    """Images the tower runs on: Llava's (N, C, H, W); Idefics3's (B, N_tiles, C, H, W) tiles that are not all
    zeros (the zero padding tiles of shorter rows, which the model skips)."""
    if pixel_values is None:
        return 0
    if pixel_values.dim() == 4:
        return int(pixel_values.shape[0])
    return int((pixel_values != 0).flatten(2).any(dim=-1).sum())
