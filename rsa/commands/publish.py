"""`rsa publish CHECKPOINT --runs RUN_DIR... --hub_model_id USER/NAME`: model card with the RSA evaluation, Hub upload.

    rsa eval --model outputs/qwen3_4b_agg/checkpoint-200 --dataset hmmt25 --out runs/ckpt200-hmmt25
    rsa publish outputs/qwen3_4b_agg/checkpoint-200 --runs runs/ckpt200-hmmt25 --hub_model_id me/qwen3-4b-agg --dry-run
    rsa publish outputs/qwen3_4b_agg/checkpoint-200 --runs runs/ckpt200-hmmt25 --hub_model_id me/qwen3-4b-agg \\
        --hub_revision step-200 --hub_private_repo

builds the upload folder (default: hub-<checkpoint name> next to the checkpoint): the model files without
optimizer state (JSON metadata with local paths cut to folder names), README.md (model card: metadata with
base_model, datasets and model-index results; a compact RSA table, plot, full tables, training settings)
and eval/. Without --dry-run the folder is pushed to the Hugging Face Hub (to the branch --hub_revision if
given); a token is required (`hf auth login`, HF_TOKEN or --token) and the Hub must be online.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `publish` subcommand."""
    p = sub.add_parser(
        "publish",
        help="write a model card with the RSA evaluation and push a checkpoint to the Hugging Face Hub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (checkpoint-* or the training output_dir)")
    p.add_argument(
        "--runs", nargs="+", type=Path, required=True, metavar="RUN_DIR", help="run directories written by `rsa eval`"
    )
    # Hub options named as in TRL (hub_model_id, hub_private_repo, hub_revision); the first names stay accepted
    p.add_argument(
        "--hub_model_id", "--repo-id", dest="repo_id", required=True, help="Hub repository, e.g. my-org/qwen3-4b-agg-rl"
    )
    p.add_argument(
        "--out", type=Path, help="upload folder to write (default: hub-<checkpoint name> beside the checkpoint)"
    )
    p.add_argument("--dry-run", action="store_true", help="write the folder and model card only; push nothing")
    p.add_argument(
        "--hub_private_repo", "--private", dest="private", action="store_true", help="create the repository as private"
    )
    p.add_argument(
        "--hub_revision",
        "--revision",
        dest="revision",
        help="branch to push to, e.g. step-500 (created if missing; default: main)",
    )
    p.add_argument(
        "--base-model",
        help="Hub id of the base model, when training started from a local copy (default: from rsa_training.json)",
    )
    p.add_argument(
        "--dataset-id",
        action="append",
        metavar="REPO",
        help="Hub id of a training dataset for the card's `datasets:` (repeatable; default: from rsa_training.json)",
    )
    p.add_argument("--license", help="license id for the card metadata, e.g. apache-2.0")
    p.add_argument(
        "--allow-other-model",
        action="store_true",
        help="publish runs whose manifest names another model than the checkpoint (the card says so)",
    )
    p.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the saved login)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the folder; push it unless --dry-run."""
    from rsa.hub import check_can_push
    from rsa.publish import prepare_folder, push_folder

    checkpoint = args.checkpoint.resolve() if args.checkpoint.exists() else args.checkpoint
    out = args.out or checkpoint.parent / f"hub-{checkpoint.name}"
    token = None if args.dry_run else check_can_push(args.token)  # refuse before doing any work
    folder = prepare_folder(
        args.checkpoint,
        args.runs,
        out,
        args.repo_id,
        license=args.license,
        base_model=args.base_model,
        datasets=args.dataset_id,
        revision=args.revision,
        allow_other_model=args.allow_other_model,
    )
    print(f"model card: {folder / 'README.md'}")
    if args.dry_run:
        print(f"dry run: nothing pushed; the folder {folder} is what would be uploaded to {args.repo_id}")
        return 0
    url = push_folder(
        folder,
        args.repo_id,
        token,
        private=args.private,
        revision=args.revision,
        commit_message="Upload checkpoint with RSA evaluation (rsa publish)",
    )
    print(f"pushed: {url}")
    return 0
