"""`vlmforge bench`: training and inference speed, vlmforge side by side with a naive baseline.

    vlmforge bench --config small --json bench.json     # a 2-core CPU: about 2-3 minutes
    vlmforge bench --config tiny --steps 2              # seconds (what the tests run)
    vlmforge bench --config 7b-lora                     # a CUDA GPU: SigLIP-so400m + Qwen2.5-7B shapes
    vlmforge bench --plan instruct-lora --model my-vlm --gpu-gb 24    # memory estimate, batch advice; no run
"""

from __future__ import annotations

CONFIG_NAMES = ("tiny", "small", "7b-lora")


def add_arguments(parser) -> None:
    parser.add_argument("--config", choices=CONFIG_NAMES, default="small", help="model and data shapes (default: small)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per side (default: the config's)")
    parser.add_argument("--json", metavar="OUT", default="", help="also write the full report as JSON")
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="vlmforge side's precision (default auto: bf16 autocast on a GPU, or a CPU with AMX)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 on a CPU shared with other torch work)")
    parser.add_argument("--plan", metavar="RECIPE", default="",
                        help="only estimate RECIPE's GPU memory and recommend a batch size (no benchmark run)")
    parser.add_argument("--model", default="", help="--plan: the model folder (default: the recipe's model.path, "
                                                    "else the shapes of --config)")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="--plan: GPU memory in GB (default 80)")
    parser.add_argument("--seq-len", type=int, default=None, help="--plan: tokens per sequence (default: data.max_length)")
    parser.add_argument("--work-dir", default="", help="keep the data, models and runs here (default: a temporary folder)")


def run(args) -> int:
    import json
    from pathlib import Path

    if args.plan:
        return _plan(args)
    from vlmforge.bench.report import format_report
    from vlmforge.bench.runner import run_bench

    report = run_bench(args.config, steps=args.steps, device=args.device, work_dir=args.work_dir or None,
                       precision=args.precision, threads=args.threads)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}")
    return 0


def _plan(args) -> int:
    from vlmforge.bench.plan import format_plan, plan_recipe

    result, title = plan_recipe(args.plan, args.gpu_gb, args.model, args.config, args.seq_len)
    print(format_plan(result, title))
    return 0
