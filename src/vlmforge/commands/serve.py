"""`vlmforge serve MODEL [--host 127.0.0.1] [--port 8000] [--api-key KEY]`: OpenAI-compatible API + chat page.

Every flag comes from `ServeConfig`; the API key can also come from the env `VLMFORGE_API_KEY`.
"""

from __future__ import annotations

import logging
import os

API_KEY_ENV = "VLMFORGE_API_KEY"


def add_arguments(parser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments
    from vlmforge.infer.serve_config import ServeConfig

    parser.add_argument("model", help="model folder to serve (what `vlmforge build` / `export` wrote)")
    add_config_arguments(parser, ServeConfig, skip=("model",))


def run(args) -> int:
    from vlmforge.config import from_args
    from vlmforge.infer.serve_config import ServeConfig

    key = getattr(args, "api_key", None) or os.environ.get(API_KEY_ENV)  # the flag wins over the environment
    from_env = {"api_key": key} if key else {}
    config = from_args(ServeConfig, args, **from_env)  # checked (ServeConfig.validate) before the model loads

    from vlmforge.infer.server import serve

    if not args.verbose:  # uvicorn's start-up lines repeat the URL; its warnings and request log stay
        logging.getLogger("uvicorn.error").addFilter(lambda record: record.levelno > logging.INFO)
    serve(config)  # logs "serving MODEL at URL" once the model is loaded
    return 0
