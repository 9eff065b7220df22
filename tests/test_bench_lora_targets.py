"""The benchmark counts LoRA where training puts it: targets discovered by `train.trainability`, not a list of its own."""

from vlmforge.bench.flops import ModelShape, config_lora_targets
from vlmforge.train.trainability import language_linear_names


def _lora_weights(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


def test_targets_from_a_config_are_the_language_models_linears(tiny_vlm_dir):
    from vlmforge.model.load import load

    model, _ = load(tiny_vlm_dir, dtype="float32")
    assert config_lora_targets(model.config) == tuple(language_linear_names(model))
    assert ModelShape.from_llava_config(model.config, lora_rank=4).lora_targets == tuple(language_linear_names(model))
    assert ModelShape.from_llava_config(model.config).lora_targets == ()  # no LoRA, nothing to find


def test_a_wrapped_model_counts_exactly_the_adapters_training_made(tiny_vlm_dir):
    from vlmforge.model.load import load
    from vlmforge.train.recipe import LoraSection
    from vlmforge.train.trainability import set_trainable

    model, _ = load(tiny_vlm_dir, dtype="float32")
    for targets in (["q_proj", "v_proj"], []):
        lora = LoraSection(rank=4, alpha=8, dropout=0.0, target_modules=targets)
        wrapped = set_trainable(load(tiny_vlm_dir, dtype="float32")[0], "frozen", "full", "lora", lora)
        shape = ModelShape.from_model(wrapped.get_base_model(), lora_rank=4)
        assert shape.lora_targets == tuple(sorted(targets or language_linear_names(model)))
        assert shape.lora_params == _lora_weights(wrapped)
