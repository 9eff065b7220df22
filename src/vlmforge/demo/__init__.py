"""The from-scratch demo: a VLM built offline on a CPU from generated shape scenes.

`parts` makes the pieces a user would otherwise download: a tokenizer, a vision tower and a
language model, each pre-trained from scratch on the synthetic data and saved as an ordinary
Hugging Face folder that `vlmforge build` takes.
"""
