"""Inference: generation (single, streamed, batched), the chat session, the server and web page."""
