"""Evaluation: caption metrics (BLEU, ROUGE-L, CIDEr-D; jieba for Chinese), VQA exact match, and
scoring a predictions file against reference records (`vlmforge eval score`)."""
