"""Where training metrics go: the console (logging), `metrics.jsonl`, TensorBoard, and `curves.png`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("vlmforge.train")


class MetricsLog:
    """Append one JSON object per log step to OUTPUT_DIR/metrics.jsonl (rank 0 only)."""

    def __init__(self, output_dir: Path, enabled: bool = True, tensorboard: bool = False, resume_step: int = 0):
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            self._truncate_after(resume_step)
            if tensorboard:
                self.writer = _tensorboard_writer(output_dir / "tensorboard")

    def _truncate_after(self, step: int) -> None:
        """On resume, forget lines logged after the checkpoint we resume from (they will be redone)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, metrics["step"])
        log.info(format_metrics(metrics))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def format_metrics(metrics: dict) -> str:
    parts = [f"step {metrics['step']}"]
    for key, value in metrics.items():
        if key != "step":
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " | ".join(parts)


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from vlmforge.errors import ConfigError

        raise ConfigError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(folder))


def plot_curves(metrics_path: Path, out: Path) -> Path | None:
    """Loss and learning-rate curves from metrics.jsonl as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no curves.png")
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    if not rows:
        return None
    steps = [row["step"] for row in rows]
    figure, (loss_axis, lr_axis) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_axis.plot(steps, [row["loss"] for row in rows], label="train loss")
    eval_rows = [row for row in rows if "eval_loss" in row]
    if eval_rows:
        loss_axis.plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-", label="eval loss")
    loss_axis.set(xlabel="step", ylabel="loss", title="loss")
    loss_axis.legend()
    for key in sorted({key for row in rows for key in row if key.startswith("lr_")}):
        lr_axis.plot(steps, [row.get(key) for row in rows], label=key[3:])
    lr_axis.set(xlabel="step", ylabel="learning rate", title="learning rates")
    lr_axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
