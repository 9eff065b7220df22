"""`vlmforge bench`: training and inference speed, vlmforge side by side with TRL's SFTTrainer (or a naive loop).

    vlmforge bench --config small --json bench.json     # a 2-core CPU: under 5 minutes
    vlmforge bench --config small --breakdown           # + vlmforge with each speed lever off in turn
    vlmforge bench --config small --baseline naive      # the plain transformers + peft loop instead of TRL
    vlmforge bench --config tiny --steps 2              # seconds (what the tests run)
    vlmforge bench --config small --export-data DIR     # the model, data and settings for another trainer
    vlmforge bench --config 7b-lora                     # a CUDA GPU: SigLIP-so400m + Qwen2.5-7B shapes
    vlmforge bench --plan instruct-lora --model my-vlm --gpu-gb 24    # memory estimate, batch advice; no run
"""

from __future__ import annotations

CONFIG_NAMES = ("tiny", "small", "7b-lora")


def add_arguments(parser) -> None:
    parser.add_argument("--config", choices=CONFIG_NAMES, default="small", help="model and data shapes (default: small)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per side (default: the config's)")
    parser.add_argument("--json", metavar="OUT", default="", help="also write the full report as JSON")
    parser.add_argument("--baseline", choices=("trl", "naive"), default="",
                        help="what vlmforge is compared with: trl (TRL's SFTTrainer, the `bench` extra) or naive "
                             "(a plain transformers + peft loop); default: trl when installed, else naive")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time vlmforge with each speed lever switched off in turn (a few minutes more)")
    parser.add_argument("--no-generation", action="store_true", help="skip the generation phase")
    parser.add_argument("--export-data", metavar="DIR", default="",
                        help="only write the config's model folder, data and shared settings to DIR (for "
                             "scripts/bench-llamafactory.sh); no measurement")
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="vlmforge side's precision (default auto: bf16 autocast on a GPU, or a CPU with AMX)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 on a CPU shared with other torch work)")
    parser.add_argument("--plan", metavar="RECIPE", default="",
                        help="only estimate RECIPE's GPU memory and recommend a batch size (no benchmark run)")
    parser.add_argument("--model", "--model.path", dest="model", default="", help="--plan: the model folder (default: the recipe's model.path, "
                                                    "else the shapes of --config)")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="--plan: GPU memory in GB (default 80)")
    parser.add_argument("--seq-len", type=int, default=None, help="--plan: tokens per sequence (default: data.max_length)")
    parser.add_argument("--work-dir", default="", help="keep the data, models and runs here (default: a temporary folder)")


def run(args) -> int:
    import json
    from pathlib import Path

    if args.plan:
        return _plan(args)
    if args.export_data:
        return _export(args)
    from vlmforge.bench.report import format_report
    from vlmforge.bench.runner import default_baseline, run_bench

    baseline = args.baseline or default_baseline()
    if not args.baseline and baseline == "naive":
        print("note: TRL is not installed (pip install -e '.[bench]'): comparing with the naive loop")
    report = run_bench(args.config, steps=args.steps, device=args.device, work_dir=args.work_dir or None,
                       precision=args.precision, threads=args.threads, baseline=baseline, breakdown=args.breakdown,
                       inference=not args.no_generation, progress=_progress_bar)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}")
    return 0


def _progress_bar(phase: str, total: int):
    """One bar per phase, on stderr; it disappears when the phase is done."""
    from tqdm import tqdm

    return tqdm(total=total, desc=phase, unit="step", leave=False, dynamic_ncols=True)


def _export(args) -> int:
    from vlmforge.bench.runner import export_bench

    folder = export_bench(args.config, args.export_data, steps=args.steps, precision=args.precision)
    print(f"model, data and settings written to {folder} (settings: {folder / 'settings.json'})")
    return 0


def _plan(args) -> int:
    from vlmforge.bench.plan import format_plan, plan_recipe

    result, title = plan_recipe(args.plan, args.gpu_gb, args.model, args.config, args.seq_len)
    print(format_plan(result, title))
    return 0
