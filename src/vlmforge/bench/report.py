"""The benchmark report as a plain-text table: vlmforge, the baseline (TRL or naive), their ratio, the levers."""

from __future__ import annotations


def _number(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f}{suffix}"
    return f"{value:,.{digits}f}"


def _ratio(ours, theirs, higher_is_better: bool = True) -> str:
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.2f}×" if higher_is_better else f"{theirs / ours:.2f}×"


def _rows(report: dict) -> list[tuple[str, str, str, str]]:
    training = report["training"]
    ours, theirs = training["vlmforge"], training["baseline"]
    if "error" in theirs:
        theirs = {}
    name = {"trl": "TRL SFTTrainer", "naive": "naive loop"}.get(training.get("baseline_name"), "baseline")
    rows = [("training", f"vlmforge ({ours['precision']})", f"{name} ({theirs.get('precision', 'fp32')})", "ratio")]
    for label, key, digits in (("real tokens/s", "real_tokens_per_s", 0), ("samples/s", "samples_per_s", 2),
                               ("median step (s)", "median_step_s", 3)):
        rows.append((label, _number(ours[key], digits), _number(theirs.get(key), digits),
                     _ratio(ours[key], theirs.get(key), key != "median_step_s")))
    if report["machine"]["device"] == "cpu":
        rows.append(("real tokens per CPU-s", _number(ours.get("real_tokens_per_cpu_s"), 0),
                     _number(theirs.get("real_tokens_per_cpu_s"), 0),
                     _ratio(ours.get("real_tokens_per_cpu_s"), theirs.get("real_tokens_per_cpu_s"))))
    rows.append(("FLOPs/step needed", _number(ours["flops_per_step"], 1), _number(theirs.get("flops_per_step"), 1), ""))
    rows.append(("FLOPs/step executed", _number(ours["executed_flops_per_step"], 1),
                 _number(theirs.get("executed_flops_per_step"), 1),
                 _ratio(theirs.get("executed_flops_per_step"), ours["executed_flops_per_step"])))
    rows.append(("MFU", _percent(ours["mfu"]), _percent(theirs.get("mfu")), ""))
    rows.append(("pad fraction", _percent(ours["pad_fraction"]), _percent(theirs.get("pad_fraction")), ""))
    rows.append(("peak memory (MB)", _number(ours["peak_memory_mb"], 0), _number(theirs.get("peak_memory_mb"), 0), ""))
    rows.append(("trainable parameters", _number(ours.get("trainable_params"), 0), _number(theirs.get("trainable_params"), 0), ""))
    rows.append(("step-1 loss", _number(ours.get("step1_loss"), 4), _number(theirs.get("step1_loss"), 4), ""))
    breakdown = report.get("breakdown")
    if breakdown:
        from vlmforge.bench.levers import LEVER_LABELS

        rows.append(("vlmforge with one lever off", "real tokens/s", "pad fraction", "ratio"))
        for lever, row in breakdown.items():
            cpu = f" (CPU-time {row['cpu_time_gain']:.2f}×)" if row.get("cpu_time_gain") else ""
            rows.append((LEVER_LABELS.get(lever, lever) + (f" ({row['precision']})" if lever == "precision" else ""),
                         _number(row["real_tokens_per_s"], 0), _percent(row["pad_fraction"]), f"{row['gain']:.2f}×{cpu}"))
    inference = report.get("inference")
    if inference:
        rows.append((f"generation ({inference['dtype']})", "vlmforge", "plain generate", "ratio"))
        for batch_key, ours_gen in inference["vlmforge"].items():
            plain = inference["plain"][batch_key]
            batch = batch_key.removeprefix("batch_")
            rows.append((f"TTFT ms, batch {batch}", _number(ours_gen["ttft_ms"]), _number(plain["ttft_ms"]),
                         _ratio(ours_gen["ttft_ms"], plain["ttft_ms"], higher_is_better=False)))
            rows.append((f"decode tok/s, batch {batch}", _number(ours_gen["decode_tokens_per_s"], 0),
                         _number(plain["decode_tokens_per_s"], 0),
                         _ratio(ours_gen["decode_tokens_per_s"], plain["decode_tokens_per_s"])))
    return rows


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def format_report(report: dict) -> str:
    """The table `vlmforge bench` prints; ratios > 1 mean vlmforge is faster."""
    gemm, machine = report["gemm"], report["machine"]
    head = [f"vlmforge bench --config {report['config']}  on {machine['cpu']} ({machine['cpu_cores']} cores"
            + (f", {machine['gpu']}" if machine.get("gpu") else "") + f"), torch {machine['torch']}",
            f"GEMM {gemm['size']}²: fp32 {_number(gemm['fp32_tflops'], 3)} TFLOP/s, bf16 {_number(gemm['bf16_tflops'], 3)} TFLOP/s"]
    if report.get("images"):
        from vlmforge.bench.models import describe_image_tokens

        head.append(f"images ({report['images']['arch']}): {describe_image_tokens(report['images'])}")
    busy = max(machine.get("load_average_start") or 0, machine.get("load_average_end") or 0)
    if machine["device"] == "cpu" and busy > 0.5 * (machine["cpu_cores"] or 1):
        head.append(f"note: load average {busy} on {machine['cpu_cores']} cores — other work shares this CPU; "
                    "absolute figures are noisy, the ratios (steps alternate) less so")
    rows = _rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        if row[3] == "ratio":
            lines.append("")
        lines.append("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))))
    training = report["training"]
    speedup = "-" if training["speedup"] is None else f"{training['speedup']:.2f}×"
    cpu = f" (per CPU-second: {training['cpu_time_speedup']:.2f}×)" if training.get("cpu_time_speedup") else ""
    tail = (f"\ntraining speedup (real tokens/s): {speedup}{cpu}; vlmforge MFU {_percent(training['mfu'])}, "
            f"padding {_percent(training['pad_fraction'])}")
    return "\n".join(head + lines) + tail
