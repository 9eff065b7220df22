"""`vlmforge train RECIPE [--resume] [--section.key value ...]`: train from a recipe name or YAML file.

Runs alike under `torchrun --nproc_per_node N -m vlmforge train RECIPE` and `accelerate launch`.
"""

from __future__ import annotations

import os


def add_arguments(parser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments
    from vlmforge.train.recipe import Recipe

    parser.add_argument("recipe", help="a shipped recipe name (vlmforge recipes list) or a YAML file")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    add_config_arguments(parser, Recipe)


def run(args) -> int:
    from vlmforge.config import apply_overrides, overrides_from_args
    from vlmforge.train.loop import train
    from vlmforge.train.recipe import Recipe, load_recipe

    recipe = apply_overrides(load_recipe(args.recipe), overrides_from_args(args, Recipe))
    callbacks = _eval_callbacks(recipe)
    result = train(recipe, resume=args.resume, callbacks=callbacks)
    if os.environ.get("RANK", "0") != "0":  # torchrun / accelerate: rank 0 reports for all
        return 0
    print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; run folder {result.output_dir}")
    if result.final_model:
        print(f"merged model: {result.final_model}")
    return 0


def _eval_callbacks(recipe) -> list:
    """The recipe's `eval` section runs the evaluator every N steps (wired here: eval sits above train)."""
    if not recipe.eval.data:
        return []
    from vlmforge.eval.during_training import make_eval_callback

    return [make_eval_callback(recipe)]
