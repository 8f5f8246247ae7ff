"""`rsa tiny-model --out DIR`: build the offline tiny Qwen3 model and tokenizer."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `tiny-model` subcommand."""
    p = sub.add_parser("tiny-model", help="build a tiny Qwen3 model + BPE tokenizer offline (seconds)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size (model vocab = tokenizer size)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the model into `args.out`."""
    from rsa.tiny import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers, seed=args.seed
    )
    path = build_tiny_model(args.out, spec)
    print(path)
    return 0
