"""`vlmforge bench`: training and inference speed measured side by side with a naive baseline.

    from vlmforge.bench.runner import run_bench
    report = run_bench("small")      # or: vlmforge bench --config small --json bench.json

One run measures, on the same model and the same data: this machine's GEMM ceiling, vlmforge's
training step (through the trainer's own code), a plain transformers + peft baseline, and
generation through vlmforge's path against plain `model.generate`. Ratios from one run are what
count: the machine's noise cancels in them.
"""
