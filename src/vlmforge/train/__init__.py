"""Training: recipes, trainability (frozen / LoRA / full), the loop, checkpoints, export."""
