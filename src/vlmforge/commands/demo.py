"""`vlmforge demo [--out DIR] [--fast] [--seed N]`: build and train a tiny VLM from scratch, offline, and prove it sees.

Runs `vlmforge.demo.pipeline.run_demo`, then prints the accuracy table (with the images and with
blank ones), two sample conversations and where the model is. Details: docs/demo.md.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments
    from vlmforge.demo.pipeline import DemoConfig

    add_config_arguments(parser, DemoConfig)


def run(args) -> int:
    from vlmforge.config import from_dict, overrides_from_args
    from vlmforge.demo.pipeline import DemoConfig, run_demo
    from vlmforge.demo.report import format_samples, format_seconds, format_table

    config = from_dict(DemoConfig, overrides_from_args(args, DemoConfig))
    report = run_demo(config)
    print()
    print(f"held-out test questions ({report['num_test']}), greedy answers, exact match:")
    print(format_table(report))
    print()
    print(format_samples(report["samples"]))
    print()
    print(f"time: {format_seconds(report['stage_seconds'], report['seconds'])}")
    print(f"model: {report['model_dir']}  (vlmforge chat {report['model_dir']} --image IMAGE --prompt QUESTION)")
    print(f"report: {config.out}/report.json")
    return 0
