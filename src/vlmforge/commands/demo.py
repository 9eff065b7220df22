"""`vlmforge demo [--out DIR] [--fast] [--seed N]`: build and train a tiny VLM from scratch, offline, and prove it sees.

Says first how long the run will take here (a one-second measurement, `vlmforge.demo.estimate`),
runs `vlmforge.demo.pipeline.run_demo`, then prints the accuracy table (with the images and with
blank ones), two sample conversations and the next commands, written so that they work when pasted
into a shell in the same folder. Details: docs/demo.md.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments
    from vlmforge.demo.pipeline import DemoConfig

    add_config_arguments(parser, DemoConfig)


def run(args) -> int:
    from vlmforge.config import from_dict, overrides_from_args
    from vlmforge.demo.pipeline import DemoConfig, run_demo
    from vlmforge.demo.report import format_samples, format_seconds, format_table

    config = from_dict(DemoConfig, overrides_from_args(args, DemoConfig))
    expected = announce_estimate(config)
    report = run_demo(config, expected_seconds=expected)
    data_dir = Path(config.out) / "data"
    samples = [{**sample, "image": shown_path(data_dir / sample["image"])} for sample in report["samples"]]
    print()
    print(f"held-out test questions ({report['num_test']}), greedy answers, exact match:")
    print(format_table(report))
    print()
    print(format_samples(samples))
    print()
    print(f"time: {format_seconds(report['stage_seconds'], report['seconds'])}")
    print(f"model: {shown_path(report['model_dir'])}")
    print(f"report: {shown_path(Path(config.out) / 'report.json')}")
    print()
    print("\n".join(next_commands(report["model_dir"], samples[0] if samples else None)))
    return 0


def announce_estimate(config) -> dict[str, float]:
    """Print how long this run (and the other size) should take here; returns the expected seconds per stage."""
    from vlmforge.demo.estimate import estimate_stage_seconds, measure_lm_step_seconds
    from vlmforge.demo.pipeline import DEFAULT_BUDGET, FAST_BUDGET, budget_for

    step = measure_lm_step_seconds()
    expected = estimate_stage_seconds(budget_for(config), step)
    other = estimate_stage_seconds(DEFAULT_BUDGET if config.fast else FAST_BUDGET, step)
    print(f"demo{' --fast' if config.fast else ''}: about {format_duration(sum(expected.values()))} on this "
          f"machine (estimated from a training step measured just now: {1000 * step:.0f} ms)")
    if config.fast:
        print(f"  without --fast: about {format_duration(sum(other.values()))}, and a model that answers "
              f"nearly every question right")
    else:
        print(f"  with --fast: about {format_duration(sum(other.values()))}, a weaker model that still beats "
              f"blank images")
    sys.stdout.flush()
    return expected


def format_duration(seconds: float) -> str:
    """"40 s", "1.5 min", "16 min": a rounded figure, as honest as an estimate can be."""
    if seconds < 90:
        return f"{max(5, 5 * round(seconds / 5))} s"
    if seconds < 600:
        return f"{round(seconds / 60 * 2) / 2:g} min"
    return f"{round(seconds / 60)} min"


def next_commands(model_dir: str, sample: dict | None) -> list[str]:
    """What to run next, as the user can paste it here (no activated environment needed)."""
    vlmforge, model = vlmforge_command(), shlex.quote(shown_path(model_dir))
    lines = ["next, in this folder:"]
    if sample is not None:
        lines.append(f"  {vlmforge} chat {model} --image {shlex.quote(sample['image'])} "
                     f"--prompt {shlex.quote(sample['question'])}")
    lines += [f"  {vlmforge} chat {model}      # interactive: /image PATH, then ask; /quit",
              f"  {vlmforge} serve {model}     # chat page and OpenAI-compatible API at http://127.0.0.1:8000/"]
    activate = Path(sys.executable).parent / "activate"
    if vlmforge != "vlmforge" and activate.exists():
        lines.append(f"(or once per shell: source {shlex.quote(shown_path(activate))}; then plain `vlmforge ...`)")
    return lines


def vlmforge_command() -> str:
    """How this shell's user runs vlmforge: `vlmforge` when it is on PATH (an activated environment),
    else the path of this environment's `vlmforge` script."""
    script = Path(sys.executable).parent / "vlmforge"
    on_path = shutil.which("vlmforge")
    if on_path and script.exists() and os.path.samefile(on_path, script):
        return "vlmforge"
    if script.exists():
        return shlex.quote(shown_path(script, executable=True))
    return f"{shlex.quote(shown_path(sys.executable, executable=True))} -m vlmforge"


def shown_path(path, executable: bool = False) -> str:
    """`path` as it works from the current folder: relative when inside it, else absolute (a program
    in the current folder itself gets "./", or the shell would look it up on PATH)."""
    absolute = Path(os.path.abspath(path))
    try:
        shown = str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)
    return f"./{shown}" if executable and os.sep not in shown else shown
