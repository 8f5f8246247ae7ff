"""`rsa serve`: an OpenAI-compatible chat-completions server that answers every request with RSA.

    rsa serve --model models/tiny --engine vllm --population 8 --k 4 --steps 5 --port 8000
    rsa serve --model Qwen/Qwen3-4B --engine openai --base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1

N, K, T, the final rule and sampling are the server's defaults; a request overrides them in its `rsa` object
(`extra_body={"rsa": {...}}` in the OpenAI clients). The server binds 127.0.0.1 unless given --api-key (or
RSA_SERVE_API_KEY). Options can come from a YAML file (`--config FILE.yaml`); the options are the fields of
`rsa.configs.ServeConfig`. See docs/SERVE.md.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """List the `serve` subcommand in `rsa --help` (its options are parsed by `main`)."""
    sub.add_parser("serve", help="serve RSA answers over an OpenAI-compatible HTTP API", add_help=False)


def main(argv: list[str]) -> int:
    """Parse the options (TrlParser, `--config` + overrides) and serve until interrupted; returns the exit code."""
    from rsa.commands.config_parser import parse_config
    from rsa.configs import ServeConfig
    from rsa.engines.base import EngineError
    from rsa.serve import serve

    config = parse_config(ServeConfig, argv, prog="rsa serve", description=__doc__)
    try:
        serve(config, ready=lambda url: print(f"rsa serve: listening on {url}", flush=True))
    except (
        OSError,
        ImportError,
        EngineError,
    ) as exc:  # a busy port, a missing engine package, an engine that won't start
        print(f"rsa serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
