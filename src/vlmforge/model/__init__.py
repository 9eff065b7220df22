"""Model layer: compose a vision tower, a projector and a causal LM into transformers' Llava."""
