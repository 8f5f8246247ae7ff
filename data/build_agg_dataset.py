"""Build an aggregation-aware RL dataset: the paper's recipe as a script (same options as `rsa augment`).

    python data/build_agg_dataset.py --model Qwen/Qwen3-4B-Instruct-2507 --engine vllm \\
        --dataset deepscaler_rg.parquet --num-candidates 4 --k 4 --aggregate-fraction 0.5 \\
        --max-model-len 41984 --max-completion-length 8192 --out data/agg-qwen3-4b

Paper setting: K=4 candidates per problem sampled once at temperature 1.0 from the model before training,
one aggregation prompt per problem, mixed with the plain prompts. What differs here: a mixture fraction,
K ranges, several sets per problem and an AggLM-style easy/hard balance are options (--aggregate-fraction,
--k 2-4, --sets-per-problem, --balance easy=0.5,hard=0.5), and over-long candidates are capped with a
visible marker (or dropped, --overflow drop) so that no prompt exceeds --max-model-len minus
--max-completion-length. A killed build continues with --resume. All logic lives in `rsa.augment`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rsa.commands.augment import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the build (or --import); returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"build_agg_dataset: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
