"""Where training metrics go: the console (logging), `metrics.jsonl`, TensorBoard, and `curves.png`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vlmforge.errors import VlmforgeError
from vlmforge.utils.atomic import atomic_write_text, describe_device, is_disk_full

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
        """On resume, forget lines logged after the checkpoint we resume from (they will be redone),
        and a torn last line a killed run left; rewritten atomically, so a kill here loses nothing."""
        if not self.path.exists():
            return
        kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics) + "\n")
        except OSError as error:
            if not is_disk_full(error):
                raise
            raise VlmforgeError(f"no space left on {describe_device(self.path.parent)} while writing {self.path}; "
                                "checkpoints already written are intact: free some space, then continue with --resume") from None
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, metrics["step"])
        log.info(format_metrics(metrics))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a line a killed run left half-written (or any undecodable one)
    is left out, since it will be logged again when the run goes on."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
    return rows


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
    rows = [row for row in read_metrics(metrics_path) if "step" in row and "loss" in row]
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
