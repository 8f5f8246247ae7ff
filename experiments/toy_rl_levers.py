"""Does aggregation-aware RL pull ahead of standard RL with a larger RL budget or more aggregation prompts?

    .venv/bin/python experiments/toy_rl_levers.py --demo runs/demo-add --out runs/rl-levers [--workers 2]

Starts from a finished addition-world demo (`rsa demo --world add --out runs/demo-add`; `--demo`, its output folder; its base must have been pre-trained with the
shipped `PretrainConfig`, so every variant shares the demo's base, gate and held-out problems). For each variant
in `VARIANTS` it runs the demo pipeline (`rsa.toyworld.pipeline.run_toy_world`) under `--out/v<i>` with the
demo's `ToyWorldConfig` changed only as listed: all four arms, the demo's training seeds and RSA seeds, equal
budgets across arms, and prints the variant's summary exactly as the demo prints it.

Then it measures the aggregation skill of every model (the demo's own and each variant's) on fixed candidates:
the base gate's measurement (`rsa.toyworld.diagnostics.measure_base`: fresh in-distribution problems, K=3
candidates from the pre-training generator, the same prompts for every model), so that picking a valid
candidate is compared on equal inputs rather than on each arm's own RSA population. Finished stages and
measurements are not redone, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rsa.toyworld import PretrainConfig, ToyWorldConfig  # noqa: E402

#: name -> changes to the demo's ToyWorldConfig (every arm gets the same change)
VARIANTS: dict[str, dict] = {
    "3x the RL steps (300)": {"grpo_steps": 300},
    "75% aggregation prompts": {"aggregate_fraction": 0.75},
}
ARM_ORDER = ("base", "standard", "offline", "onpolicy")


def check_demo(demo: Path) -> Path:
    """The demo's base model folder; raises SystemExit if it is missing or not pre-trained with the shipped config."""
    base = demo / "models" / "base"
    info_file = base / "toy_pretrain.json"
    if not info_file.is_file():
        raise SystemExit(f"--demo {demo}: no models/base/toy_pretrain.json; pass the folder of a finished `make demo`")
    saved = json.loads(info_file.read_text())["config"]
    shipped = json.loads(json.dumps(asdict(PretrainConfig())))
    if saved != shipped:
        changed = sorted(k for k in shipped if saved.get(k) != shipped[k])
        raise SystemExit(
            f"--demo {demo}: its base was pre-trained with a different PretrainConfig ({', '.join(changed)})"
        )
    return base


def skill_table(models_dir: Path, cache_dir: Path, problems: int) -> str:
    """Measure every model under `models_dir` on fixed in-distribution candidates; a markdown table, mean over seeds."""
    from rsa.jsonl import write_json_atomic
    from rsa.toyworld.diagnostics import measure_base

    pretrain = PretrainConfig()
    by_arm: dict[str, list[dict]] = {}
    for model in sorted(p for p in models_dir.iterdir() if (p / "config.json").is_file()):
        arm = model.name.split("-t")[0]
        cache = cache_dir / f"{model.name}.json"
        if cache.is_file():
            result = json.loads(cache.read_text())
        else:
            logging.getLogger(__name__).info("measuring the aggregation skill of %s", model)
            result = measure_base(model, pretrain, problems=problems)
            write_json_atomic(cache, result)
        by_arm.setdefault(arm, []).append(result)
    lines = [
        "| arm | models | plain acc | aggregation acc | random copy | aggregation - random copy | exact copy "
        "| copies a valid candidate when one exists |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = ("plain", "agg", "random_copy", "exact_copy", "copies_valid_when_possible")
    for arm in sorted(by_arm, key=lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else len(ARM_ORDER)):
        rs = by_arm[arm]
        m = {key: sum(r[key] for r in rs) / len(rs) for key in keys}
        lines.append(
            f"| {arm} | {len(rs)} | {m['plain']:.3f} | {m['agg']:.3f} | {m['random_copy']:.3f} | "
            f"{m['agg'] - m['random_copy']:+.3f} | {m['exact_copy']:.3f} | {m['copies_valid_when_possible']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    """Run every variant, print its summary, then the aggregation skill of every model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="the output folder of a finished `make demo`")
    parser.add_argument("--out", type=Path, required=True, help="folder for every variant's models and runs")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="jobs at a time")
    parser.add_argument("--problems", type=int, default=192, help="fixed-candidate prompts per skill measurement")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    base = check_demo(args.demo)

    from rsa.toyworld.pipeline import run_toy_world

    sections = [("the demo's own models (100 RL steps, 50% aggregation prompts)", args.demo, args.out / "skill-demo")]
    for i, (name, changes) in enumerate(VARIANTS.items()):
        out = args.out / f"v{i}"
        if not (out / "models" / "base").is_dir():
            shutil.copytree(base, out / "models" / "base")  # a copy: the variant never writes into the demo
        config = replace(ToyWorldConfig.full("add"), workers=args.workers, **changes)
        table = run_toy_world(out, config)
        print(f"## Variant: {name} ({', '.join(f'{k}={v}' for k, v in changes.items())})\n\n{table}\n", flush=True)
        sections.append((f"variant: {name}", out, out / "skill"))

    print(
        f"## Aggregation skill on fixed candidates ({args.problems} in-distribution problems, K=3 candidates from "
        "the pre-training generator, the same prompts for every model; mean over training seeds)\n"
    )
    for title, folder, cache in sections:
        print(f"### {title}\n\n{skill_table(folder / 'models', cache, args.problems)}\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
