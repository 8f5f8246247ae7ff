"""Build an aggregation-aware RL dataset: the paper's recipe as a script (same options as `rsa augment`).

    python data/build_agg_dataset.py --model Qwen/Qwen3-4B-Instruct-2507 --engine vllm \\
        --dataset deepscaler_rg.parquet --num-candidates 4 --k 4 --aggregate-fraction 0.5 \\
        --train-context-len 41984 --max-completion-length 8192 --out data/agg-qwen3-4b

Paper setting: K=4 candidates per problem sampled once at temperature 1.0 from the model before training,
one aggregation prompt per problem, mixed with the plain prompts. What differs here: a mixture fraction,
K ranges, several sets per problem and an AggLM-style easy/hard balance are options (--aggregate-fraction,
--k 2-4, --sets-per-problem, --balance easy=0.5,hard=0.5), and over-long candidates are capped with a
visible marker (or dropped, --overflow drop) so that no prompt exceeds --train-context-len minus
--max-completion-length (--max-model-len is the generation engine's context). A killed build continues
with --resume. Options can come from `--config FILE.yaml`. All logic lives in `rsa.augment`
(`rsa.build_dataset.run_augment` from a config).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python data/build_agg_dataset.py` from a checkout

from rsa.commands import augment  # noqa: E402

PROG = "build_agg_dataset.py"


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the build (or --import); returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return augment.main(list(sys.argv[1:] if argv is None else argv), prog=PROG)
    except SystemExit as exc:  # --help, or a value argparse could not convert (it printed why)
        return exc.code if isinstance(exc.code, int) else 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
