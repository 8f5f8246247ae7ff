"""`rsa publish` and `rsa.publish.push_dataset`: cards, model-index, path scrubbing, and pushing to a Hub stand-in.

The real Hugging Face Hub cannot be reached from the tests, so pushes go to `HubStandIn`, a loopback HTTP
server that speaks the few Hub API routes `huggingface_hub` uses to publish (create repo, create branch,
validate README metadata, preupload, commit) and records every request and uploaded file. Like the real Hub it
answers 409 to creating a repo or branch that exists (the client's exist_ok accepts that) and 400 with its
`errors` list to a card whose metadata it rejects (here: a license id outside `HubStandIn.LICENSES`). The real
`huggingface_hub.HfApi` client talks to it (its endpoint pointed at the stand-in); nothing is mocked in
between. The checkpoints are the real tiny model and a real PEFT LoRA adapter saved from it; the dataset is
built by a real `rsa augment` run on the tiny model.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rsa.cli import main

REPO = Path(__file__).resolve().parents[1]
BASE = "Qwen/Qwen3-0.6B"  # a Hub id the training record names (never downloaded)


# ----- the Hub stand-in ------------------------------------------------------------------------------------------
class HubStandIn(ThreadingHTTPServer):
    """A loopback stand-in for the Hub API: records repos, branches, validated cards and commits (files by path),
    and every rejection it sent as (status, path)."""

    # the license ids this stand-in accepts in card metadata (the real Hub checks its own list)
    LICENSES = ("apache-2.0", "mit", "cc-by-4.0", "other")

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[tuple[str, str]] = []
        self.repos: dict[str, dict] = {}  # "type/org/name" -> create payload
        self.branches: list[tuple[str, str]] = []
        self.validated: list[dict] = []
        self.commits: list[dict] = []  # {"repo", "revision", "summary", "files": {path: bytes}}
        self.rejected: list[tuple[int, str]] = []


class _Handler(BaseHTTPRequestHandler):
    server: HubStandIn

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code: int, body: dict) -> None:
        if code >= 400:
            self.server.rejected.append((code, self.path.split("?")[0]))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 (http.server's name)
        hub = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        hub.requests.append(("POST", path))
        if self.headers.get("Authorization") != "Bearer hf_standin_token":
            return self._reply(401, {"error": "Invalid credentials"})
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_type = payload.get("type", "model")
            repo = f"{payload['organization']}/{payload['name']}"
            if f"{repo_type}/{repo}" in hub.repos:  # the Hub's answer; its settings (visibility) stay as they were
                return self._reply(
                    409, {"error": f"You already created this {repo_type} repo", "url": f"{hub.url}/{repo}"}
                )
            hub.repos[f"{repo_type}/{repo}"] = payload
            return self._reply(200, {"url": f"{hub.url}/{repo}"})
        if path == "/api/validate-yaml":
            card = json.loads(body)
            hub.validated.append(card)
            licenses = re.findall(r"^license: *(\S+)", card["content"].split("\n---", 1)[0], re.M)
            bad = [name for name in licenses if name not in HubStandIn.LICENSES]
            if bad:
                return self._reply(
                    400,
                    {"errors": [{"message": f'"license" must be one of {list(HubStandIn.LICENSES)}, got {bad[0]!r}'}]},
                )
            return self._reply(200, {})
        if len(parts) >= 6 and parts[0] == "api":  # /api/{type}s/{org}/{name}/{action}/{revision}
            repo_type, repo, action, revision = parts[1][:-1], f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            if f"{repo_type}/{repo}" not in hub.repos:
                return self._reply(404, {"error": f"Repository {repo} not found"})
            if action == "branch":
                if (repo, revision) in hub.branches:
                    return self._reply(409, {"error": "Reference already exists"})
                hub.branches.append((repo, revision))
                return self._reply(200, {})
            if action == "preupload":  # every file as a regular (inline) git blob
                files = json.loads(body)["files"]
                return self._reply(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            if action == "commit":
                lines = [json.loads(x) for x in body.splitlines() if x.strip()]
                files = {
                    x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"
                }
                header = next(x["value"] for x in lines if x["key"] == "header")
                hub.commits.append({"repo": repo, "type": repo_type, "revision": revision, "files": files, **header})
                oid = f"{len(hub.commits):040x}"
                return self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid})
        return self._reply(404, {"error": f"stand-in: no route for {path}"})


@pytest.fixture
def hub(monkeypatch):
    """A running Hub stand-in; huggingface_hub is switched online, pointed at it, with a token."""
    from huggingface_hub import constants

    server = HubStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
    yield server
    server.shutdown()
    server.server_close()


# ----- inputs ----------------------------------------------------------------------------------------------------
def fake_run(path: Path, model: str, dataset: str = "aime25", *, seed: int = 1234, revision: str | None = None,
             pass_at_1: float = 0.375) -> Path:  # fmt: skip
    """A run directory in `rsa eval`'s layout with two committed steps (hand-written metrics); `revision` is the
    evaluated model's revision in the manifest (none recorded when None)."""
    (path / "population").mkdir(parents=True)
    manifest = {"format": "rsa-run/1", "config": {"model": model, "dataset": dataset, "population": 4, "k": 2,
                                                  "steps": 2, "seed": seed, "method": "rsa"}}  # fmt: skip
    if revision is not None:
        manifest["model"] = {"path": model, "revision": revision}
    (path / "manifest.json").write_text(json.dumps(manifest))
    steps = [{"step": 1, "pass_at_1": 0.25, "pass_at_n": 0.5, "majority": 0.25, "mean_length": 100.0},
             {"step": 2, "pass_at_1": pass_at_1, "pass_at_n": 0.5, "majority": 0.5, "mean_length": 90.0}]  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    for s in steps:
        (path / "population" / f"step_{s['step']:03d}.jsonl").write_text("")
    return path


def training_record(model: str, tmp_path: Path) -> dict:
    """An `rsa_training.json` as rsa.grpo_setup.provenance writes it, with the publisher's absolute paths in it."""
    return {
        "script_args": {"dataset_files": [str(tmp_path / "data" / "agg" / "train.parquet")], "dataset_name": None,
                        "problems": "aime25", "reward_funcs": ["task"]},
        "training_args": {"num_generations": 8, "output_dir": str(tmp_path / "outputs" / "agg"),
                          "logging_dir": str(Path.home() / "runs" / "agg"), "learning_rate": 1e-6},
        "model_args": {"model_name_or_path": model},
        "argv": ["train/grpo_agg.py", "--config", str(tmp_path / "recipe.yaml")],
        "data": {"rows": 10, "kinds": {"aggregate": 5, "plain": 5}},
        "packages": {"trl": "1.16.0"},
    }  # fmt: skip


def full_checkpoint(tiny_model_dir: str, tmp_path: Path, base: str | None = None) -> Path:
    """The tiny model as `checkpoint-5` with optimizer state, a training record and a trainer state with paths."""
    checkpoint = tmp_path / "outputs" / "agg" / "checkpoint-5"
    shutil.copytree(tiny_model_dir, checkpoint)
    (checkpoint / "optimizer.pt").write_bytes(b"state")
    record = training_record(base or str(Path(tiny_model_dir).resolve()), tmp_path)
    (checkpoint / "rsa_training.json").write_text(json.dumps(record, indent=2))
    state = {"global_step": 5, "best_model_checkpoint": str(checkpoint), "log_history": []}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    return checkpoint


def assert_no_local_paths(folder: Path, tmp_path: Path) -> None:
    """No staged file (README, JSON, weights header, plots) holds the test's tmp folder or the user's home."""
    needles = {str(tmp_path.resolve()).encode(), str(Path.home()).encode(), str(Path.cwd()).encode()}
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        found = [n.decode() for n in needles if n in data]
        assert not found, f"{path.relative_to(folder)} holds {found}"


def card_of(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard((folder / "README.md").read_text())


# ----- the model card --------------------------------------------------------------------------------------------
def test_publish_dry_run_writes_card_with_the_rsa_table(tiny_model_dir, tmp_path, monkeypatch, capsys):
    checkpoint = full_checkpoint(tiny_model_dir, tmp_path, base=BASE)
    run = fake_run(tmp_path / "runs" / "ckpt5-aime25", str(checkpoint))
    run2 = fake_run(tmp_path / "runs" / "ckpt5-hmmt25", str(checkpoint), dataset="hmmt25")
    out = tmp_path / "hub"
    assert main(["publish", str(checkpoint), "--runs", str(run), str(run2), "--repo-id", "me/tiny-agg", "--out",
                 str(out), "--dry-run", "--dataset-id", "me/agg-data"]) == 0  # fmt: skip
    text = (out / "README.md").read_text()
    card = card_of(out)
    assert card.data.base_model == BASE and card.data.datasets == ["me/agg-data"]
    assert card.data.library_name == "transformers" and "aggregation-aware-rl" in card.data.tags
    # model-index parsed back by huggingface_hub: RSA Pass@1 at step 1 and at step T, majority and Pass@N
    results = {(r.dataset_type, r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert {k: v for k, v in results.items() if k[0] == "math-ai/aime25"} == {
        ("math-ai/aime25", "pass@1", "N=4,K=2,step=1"): 25.0,
        ("math-ai/aime25", "pass@1", "N=4,K=2,step=2"): 37.5,
        ("math-ai/aime25", "majority@n", "N=4,K=2,step=2"): 50.0,
        ("math-ai/aime25", "pass@n", "N=4,K=2,step=2"): 50.0,
    }
    assert len(results) == 8 and results[("MathArena/hmmt_feb_2025", "pass@1", "N=4,K=2,step=2")] == 37.5
    model_index = card.data.to_dict()["model-index"]
    assert [(x["dataset"]["name"], x["dataset"]["split"]) for x in model_index[0]["results"]] == [
        ("aime25", "test"), ("hmmt25", "train")
    ]  # fmt: skip
    # the compact main table: 7 columns; the 17-column report table sits in a collapsible section
    main_table = text.split("## RSA evaluation")[1].split("<details>")[0]
    header = next(line for line in main_table.splitlines() if line.startswith("| run |"))
    assert header.count("|") == 8
    assert "| ckpt5-aime25 | aime25 | 4 / 2 / 2 | 25.0 | **37.5** | 50.0 | 50.0 |" in main_table
    details = text.split("<details>")[1].split("</details>")[0]
    assert "| run | model | method |" in details and "| ckpt5-aime25 | checkpoint-5 | rsa | aime25 |" in details
    assert "| 2 | 37.5 | 50.0 | 50.0 | 90 |" in details
    assert "| training data | train.parquet, aime25 |" in text and f"| base model | {BASE} |" in text
    assert "eval/rsa_steps.png" in text and (out / "eval" / "rsa_steps.png").is_file()
    assert (out / "model.safetensors").is_file() and not (out / "optimizer.pt").exists()
    assert (out / "eval" / "ckpt5-aime25" / "metrics.jsonl").is_file()
    # no path of this machine in the card or any staged file; the records are kept, with names only
    assert_no_local_paths(out, tmp_path)
    record = json.loads((out / "rsa_training.json").read_text())
    assert record["script_args"]["dataset_files"] == ["train.parquet"]
    assert record["argv"] == ["train/grpo_agg.py", "--config", "recipe.yaml"]
    assert json.loads((out / "trainer_state.json").read_text())["best_model_checkpoint"] == "checkpoint-5"
    assert json.loads((out / "eval" / "ckpt5-aime25" / "manifest.json").read_text())["config"]["model"] == (
        "checkpoint-5"
    )


def test_card_omits_base_model_when_only_a_local_path_is_known(tiny_model_dir, tmp_path):
    checkpoint = full_checkpoint(tiny_model_dir, tmp_path)  # trained from the local tiny model folder
    run = fake_run(tmp_path / "runs" / "r", str(checkpoint), dataset=str(tmp_path / "my_problems.jsonl"))
    out = tmp_path / "hub"
    assert main(["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny", "--out", str(out),
                 "--dry-run"]) == 0  # fmt: skip
    card = card_of(out)
    assert card.data.base_model is None
    assert card.data.datasets == ["math-ai/aime25"]  # the training record's `problems: aime25`
    assert {r.dataset_type for r in card.data.eval_results} == {"my_problems.jsonl"}
    assert f"| base model | {Path(tiny_model_dir).name} |" in (out / "README.md").read_text()
    assert_no_local_paths(out, tmp_path)
    # an explicit Hub id for the base model is used; a path is refused before any work
    assert main(["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny", "--out", str(out),
                 "--dry-run", "--base-model", BASE]) == 0  # fmt: skip
    assert card_of(out).data.base_model == BASE
    assert main(["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny", "--out",
                 str(tmp_path / "hub2"), "--dry-run", "--base-model", str(tmp_path)]) == 2  # fmt: skip
    assert not (tmp_path / "hub2").exists()


def test_a_local_path_left_in_a_staged_file_is_refused(tiny_model_dir, tmp_path):
    checkpoint = full_checkpoint(tiny_model_dir, tmp_path, base=BASE)
    (checkpoint / "notes.txt").write_text(f"trained on {tmp_path}/data\n")  # not JSON: cannot be scrubbed
    run = fake_run(tmp_path / "runs" / "r", str(checkpoint))
    with pytest.raises(ValueError, match=r"local paths of this machine would be uploaded: notes.txt"):
        from rsa.publish import prepare_folder

        prepare_folder(checkpoint, [run], tmp_path / "hub", "me/tiny")


def test_runs_of_another_model_are_refused_unless_allowed(tiny_model_dir, tmp_path, capsys):
    from conftest import run_cli

    from rsa.provenance import model_revision

    checkpoint = full_checkpoint(tiny_model_dir, tmp_path, base=BASE)
    base_revision = model_revision(tiny_model_dir)
    (checkpoint / "model.safetensors").write_bytes(b"trained weights")  # the checkpoint differs from its base now
    own = fake_run(tmp_path / "runs" / "own2", str(checkpoint), revision=model_revision(str(checkpoint)))
    other = fake_run(tmp_path / "runs" / "base-eval", str(tiny_model_dir), revision=base_revision)
    argv = ["publish", str(checkpoint), "--runs", str(own), str(other), "--repo-id", "me/tiny", "--dry-run",
            "--out", str(tmp_path / "hub")]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and not (tmp_path / "hub").exists()  # refused before anything is staged
    assert "base-eval" in err and str(tiny_model_dir) in err and base_revision in err
    assert str(checkpoint) in err and model_revision(str(checkpoint)) in err and "--allow-other-model" in err
    # a run that recorded no revision counts only when its model path is the checkpoint
    unknown = fake_run(tmp_path / "runs" / "served", "my-served-model")
    code, _, err = run_cli([*argv[:3], str(unknown), *argv[5:]], capsys)
    assert code == 2 and "served: evaluated my-served-model (no revision recorded)" in err
    code, _, err = run_cli([*argv, "--allow-other-model"], capsys)
    assert code == 0, err
    text = (tmp_path / "hub" / "README.md").read_text()
    assert f"**Note:** Run `base-eval` evaluated `{Path(tiny_model_dir).name}`, not this checkpoint." in text


def test_runs_that_differ_only_in_seed_are_one_model_index_entry(tiny_model_dir, tmp_path):
    from rsa.publish import prepare_folder

    checkpoint = full_checkpoint(tiny_model_dir, tmp_path, base=BASE)
    runs = [fake_run(tmp_path / "runs" / f"s{seed}", str(checkpoint), seed=seed, pass_at_1=value)
            for seed, value in ((1234, 0.375), (1235, 0.5))]  # fmt: skip
    runs.append(fake_run(tmp_path / "runs" / "t1", str(checkpoint), pass_at_1=0.25))
    manifest = json.loads((runs[2] / "manifest.json").read_text())
    manifest["config"]["temperature"] = 0.6  # same dataset and N/K, another configuration
    (runs[2] / "manifest.json").write_text(json.dumps(manifest))
    prepare_folder(checkpoint, runs, tmp_path / "hub", "me/tiny")
    results = card_of(tmp_path / "hub").data.eval_results
    keys = [(r.dataset_type, r.metric_type, r.metric_config) for r in results]
    assert len(keys) == len(set(keys)) == 8  # no duplicate entries: two configurations, four metrics each
    last = {
        r.metric_config: r.metric_value for r in results if r.metric_type == "pass@1" and "step=2" in r.metric_config
    }
    assert sorted(last.values()) == [25.0, 43.75]  # the two seeds' mean, (37.5 + 50) / 2, and the other run
    assert any("mean of 2 runs" in r.metric_name for r in results)


# ----- refusals before any work ----------------------------------------------------------------------------------
def test_push_refused_without_token_or_offline(tiny_model_dir, tmp_path, monkeypatch, capsys):
    checkpoint = full_checkpoint(tiny_model_dir, tmp_path, base=BASE)
    run = fake_run(tmp_path / "runs" / "r", str(checkpoint))
    argv = ["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny-agg", "--out"]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved login
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert main([*argv, str(tmp_path / "hub1")]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert not (tmp_path / "hub1").exists()  # refused before doing any work

    monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([*argv, str(tmp_path / "hub2")]) == 2
    assert "switched offline (HF_HUB_OFFLINE" in capsys.readouterr().err
    assert not (tmp_path / "hub2").exists()

    from rsa.publish import push_dataset

    with pytest.raises(ValueError, match="switched offline"):
        push_dataset(tmp_path / "no-such-build", "me/data")  # refused before the folder is even read


# ----- the token: --token, HF_TOKEN, or the saved login ---------------------------------------------------------
def token_env(home: Path, saved: str | None = None, env_token: str | None = None) -> dict[str, str]:
    """An environment whose Hugging Face home is `home` (with `hf auth login`'s token file when `saved`)."""
    home.mkdir(parents=True, exist_ok=True)
    if saved:
        (home / "token").write_text(saved)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    env.update(HF_HOME=str(home), PYTHONPATH=str(REPO))
    if env_token:
        env["HF_TOKEN"] = env_token
    return env


def resolved_token(env: dict[str, str], *token: str) -> str:
    """`rsa.hub.resolve_token(*token)` in a fresh interpreter (huggingface_hub reads HF_HOME at import)."""
    code = "import sys\nfrom rsa.hub import resolve_token\nprint(resolve_token(*sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *token], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_resolve_token_takes_the_flag_then_hf_token_then_the_saved_login(tmp_path):
    saved_only = token_env(tmp_path / "home", saved="hf_saved_login")
    assert resolved_token(saved_only) == "hf_saved_login"
    assert resolved_token(saved_only, "hf_from_flag") == "hf_from_flag"
    both = token_env(tmp_path / "home", env_token="hf_from_env")
    assert resolved_token(both) == "hf_from_env"
    assert resolved_token(both, "hf_from_flag") == "hf_from_flag"
    assert resolved_token(token_env(tmp_path / "empty-home")) == "None"


def test_publish_with_the_saved_login_and_with_token(hub, tiny_model_dir, tmp_path, monkeypatch, capsys):
    checkpoint = full_checkpoint(tiny_model_dir, tmp_path, base=BASE)
    run = fake_run(tmp_path / "runs" / "r", str(checkpoint))
    argv = ["publish", str(checkpoint), "--runs", str(run), "--repo-id"]
    # `hf auth login`'s token file and no HF_TOKEN: a real `rsa publish` process pushes with the saved login
    env = token_env(tmp_path / "home", saved="hf_standin_token")
    env["HF_ENDPOINT"] = hub.url
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "rsa.cli", *argv, "me/saved", "--out", str(tmp_path / "hub1")],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [c["repo"] for c in hub.commits] == ["me/saved"]
    # --token with nothing else: the stand-in accepts only its token, so the push shows which one was sent
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    assert main([*argv, "me/flag", "--out", str(tmp_path / "hub2"), "--token", "hf_standin_token"]) == 0
    assert [c["repo"] for c in hub.commits] == ["me/saved", "me/flag"]
    assert not hub.rejected


# ----- pushing to the stand-in -----------------------------------------------------------------------------------
def test_publish_pushes_a_private_repo_to_a_revision(hub, tiny_model_dir, tmp_path, capsys):
    checkpoint = full_checkpoint(tiny_model_dir, tmp_path, base=BASE)
    run = fake_run(tmp_path / "runs" / "ckpt5-aime25", str(checkpoint))
    out = tmp_path / "hub"
    assert main(["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny-agg", "--out", str(out),
                 "--private", "--revision", "step-5"]) == 0  # fmt: skip
    assert f"pushed: {hub.url}/me/tiny-agg/commit/" in capsys.readouterr().out
    assert hub.repos["model/me/tiny-agg"]["visibility"] == "private"
    assert hub.branches == [("me/tiny-agg", "step-5")]
    (commit,) = hub.commits
    assert commit["revision"] == "step-5" and commit["type"] == "model"
    staged = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert commit["files"] == staged  # exactly the staged folder, byte for byte
    assert {"README.md", "model.safetensors", "config.json", "eval/ckpt5-aime25/manifest.json"} <= set(staged)
    assert "optimizer.pt" not in commit["files"]
    assert hub.validated and hub.validated[0]["content"] == staged["README.md"].decode()
    order = [p for _, p in hub.requests]
    assert order.index("/api/repos/create") < order.index("/api/models/me/tiny-agg/branch/step-5") < len(order) - 1
    assert order[-1] == "/api/models/me/tiny-agg/commit/step-5"

    # a public repo on main: no branch is created, the commit goes to main
    assert main(["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny-pub", "--out",
                 str(tmp_path / "hub-pub")]) == 0  # fmt: skip
    assert hub.repos["model/me/tiny-pub"]["visibility"] == "public"
    assert len(hub.branches) == 1 and hub.commits[-1]["revision"] == "main"


def test_publish_to_an_existing_repo_and_branch_adds_a_commit(hub, tiny_model_dir, tmp_path, capsys):
    """The repo and the branch exist (a second checkpoint of the same run): the Hub answers 409 to both creates,
    the push goes on and commits to the branch; the existing public repo is not made private behind its back."""
    checkpoint = full_checkpoint(tiny_model_dir, tmp_path, base=BASE)
    run = fake_run(tmp_path / "runs" / "r", str(checkpoint))
    hub.repos["model/me/tiny-agg"] = {"name": "tiny-agg", "organization": "me", "visibility": "public"}
    hub.branches.append(("me/tiny-agg", "step-5"))
    argv = ["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny-agg", "--out", str(tmp_path / "hub"),
            "--private", "--revision", "step-5"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert f"pushed: {hub.url}/me/tiny-agg/commit/" in capsys.readouterr().out
    assert hub.rejected == [(409, "/api/repos/create"), (409, "/api/models/me/tiny-agg/branch/step-5")]
    assert hub.repos["model/me/tiny-agg"]["visibility"] == "public"
    (commit,) = hub.commits
    assert (commit["repo"], commit["revision"]) == ("me/tiny-agg", "step-5") and "README.md" in commit["files"]


def test_a_card_the_hub_rejects_fails_the_publish_with_its_reason_and_commits_nothing(hub, tiny_model_dir, tmp_path,
                                                                                          capsys):  # fmt: skip
    checkpoint = full_checkpoint(tiny_model_dir, tmp_path, base=BASE)
    run = fake_run(tmp_path / "runs" / "r", str(checkpoint))
    argv = ["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny-agg", "--out", str(tmp_path / "hub"),
            "--license", "no-such-license"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "rsa publish: error: Invalid metadata in README.md" in err and "'no-such-license'" in err, err
    assert (400, "/api/validate-yaml") in hub.rejected and hub.commits == []
    # the same checkpoint with a license the Hub knows goes through
    assert main([*argv[:-1], "apache-2.0"]) == 0 and len(hub.commits) == 1


def lora_adapter(tiny_model_dir: str, path: Path) -> Path:
    """A real PEFT LoRA adapter of the tiny model, saved as a trainer checkpoint would be (base = local path)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(path)
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir
    return path


def test_publish_a_lora_adapter(hub, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    checkpoint = lora_adapter(tiny_model_dir, tmp_path / "outputs" / "lora" / "checkpoint-3")
    record = training_record(BASE, tmp_path)  # trained from the Hub model
    (checkpoint / "rsa_training.json").write_text(json.dumps(record))
    run = fake_run(tmp_path / "runs" / "lora3", str(checkpoint))
    out = tmp_path / "hub"
    assert main(["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny-lora", "--out",
                 str(out)]) == 0  # fmt: skip
    card = card_of(out)
    assert card.data.library_name == "peft" and card.data.base_model == BASE and "lora" in card.data.tags
    assert f"This repository holds a LoRA adapter (PEFT) for `{BASE}`" in card.text
    assert "AutoPeftModelForCausalLM" in card.text and "| LoRA adapter | True |" in card.text
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE
    assert not (out / "model.safetensors").exists() and (out / "adapter_model.safetensors").is_file()
    assert_no_local_paths(out, tmp_path)
    (commit,) = hub.commits
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(commit["files"])
    assert hub.repos["model/me/tiny-lora"]["visibility"] == "public" and hub.branches == []
    # the uploaded adapter still loads onto the base model
    adapter = tmp_path / "downloaded"
    for name, data in commit["files"].items():
        (adapter / name).parent.mkdir(parents=True, exist_ok=True)
        (adapter / name).write_bytes(data)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert loaded.peft_config["default"].r == 2

    # without a training record the adapter knows only a local base path: no base_model metadata, a name
    (checkpoint / "rsa_training.json").unlink()
    out2 = tmp_path / "hub2"
    assert main(["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny-lora", "--out", str(out2),
                 "--dry-run"]) == 0  # fmt: skip
    assert card_of(out2).data.base_model is None
    name = Path(tiny_model_dir).name
    assert json.loads((out2 / "adapter_config.json").read_text())["base_model_name_or_path"] == name
    assert_no_local_paths(out2, tmp_path)


# ----- a training dataset built by `rsa augment` ----------------------------------------------------------------
@pytest.fixture(scope="module")
def augment_build(tiny_model_dir, tmp_path_factory) -> Path:
    """A real `rsa augment` build on the tiny model (hf engine): 6 problems, M=2, K=2."""
    out = tmp_path_factory.mktemp("augment") / "agg"
    argv = ["augment", "--model", tiny_model_dir, "--engine", "hf", "--dtype", "float32", "--dataset",
            "rg:basic_arithmetic", "--size", "6", "--num-candidates", "2", "--k", "2", "--candidate-max-tokens", "16",
            "--train-context-len", "512", "--max-completion-length", "16", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_push_dataset_with_a_card_of_provenance_and_mixture(hub, augment_build, tmp_path):
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard

    from rsa.publish import push_dataset

    report = json.loads((augment_build / "build_report.json").read_text())
    url = push_dataset(augment_build, "me/agg-data", private=True, out_dir=tmp_path / "staged")
    assert url.startswith(f"{hub.url}/me/agg-data/commit/")
    assert hub.repos["dataset/me/agg-data"]["visibility"] == "private"
    (commit,) = hub.commits
    assert commit["type"] == "dataset" and commit["revision"] == "main"
    assert set(commit["files"]) == {"README.md", "train.parquet", "manifest.json", "build_report.json"}
    card = DatasetCard(commit["files"]["README.md"].decode())
    assert card.data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "train.parquet"}]}
    ]
    assert "aggregation-aware-rl" in card.data.tags
    rows = report["plain"] + report["aggregate"]
    assert f"| rows | {rows} ({report['plain']} plain, {report['aggregate']} aggregate) |" in card.text
    assert (
        "| candidates per problem (M) | 2 |" in card.text
        and "| K (candidates per aggregation prompt) | 2 |" in card.text
    )
    assert "| problems | rg:basic_arithmetic (6 problems) |" in card.text
    # the reference policy (the tiny model's local path) is named by its folder, in the card and in the rows
    staged = pq.read_table(tmp_path / "staged" / "train.parquet").to_pylist()
    original = pq.read_table(augment_build / "train.parquet").to_pylist()
    model_name = Path(original[0]["reference_model"]).name
    assert original[0]["reference_model"].startswith("/") and f"| reference policy | {model_name} |" in card.text
    assert len(staged) == len(original) == rows
    assert {r["reference_model"] for r in staged} == {model_name}
    assert [r["prompt"] for r in staged] == [r["prompt"] for r in original]
    assert_no_local_paths(tmp_path / "staged", tmp_path)
    assert_no_local_paths(tmp_path / "staged", augment_build.parent)


def test_scrub_paths_keeps_everything_but_local_paths_and_credentials():
    from rsa.hub import hub_name, is_hub_id, scrub_paths

    value = {"a": "/tmp/x/checkpoint-5", "b": ["--config", "/home/me/r.yaml"], "c": "http://127.0.0.1:8000/v1",
             "d": "data/agg", "e": 3, "f": "~/models/base", "g": "cd /srv/run && go", "h": "--out=/a/b/c",
             "i": "</think></answer>", "chat_template": "{{ '/a/b' }}"}  # fmt: skip
    assert scrub_paths(value) == {"a": "checkpoint-5", "b": ["--config", "r.yaml"], "c": "http://127.0.0.1:8000/v1",
                                  "d": "data/agg", "e": 3, "f": "base", "g": "cd run && go", "h": "--out=c",
                                  "i": "</think></answer>", "chat_template": "{{ '/a/b' }}"}  # fmt: skip
    # a run folder made before rsa eval stopped recording its API key: the staged manifest holds None
    old = {"config": {"api_key": "sk-secret", "backend_api_key": None, "population": 16}}
    assert scrub_paths(old) == {"config": {"api_key": None, "backend_api_key": None, "population": 16}}
    assert is_hub_id("Qwen/Qwen3-4B-Instruct-2507") and not is_hub_id("/models/Qwen3") and not is_hub_id("a/b/c")
    assert hub_name("/models/Qwen3-4B") == "Qwen3-4B" and hub_name("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"


def test_dataset_card_of_an_imported_verl_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard

    from rsa.publish import push_dataset

    rows = [{"data_source": "deepscaler", "prompt": [{"role": "user", "content": f"What is {i}+1? \\boxed{{}}"}],
             "ability": "math", "reward_model": {"ground_truth": str(i + 1), "style": "rule"},
             "extra_info": {"index": i}} for i in range(3)]  # fmt: skip
    source = tmp_path / "paper_agg.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    build = tmp_path / "imported"
    assert main(["augment", "--import", str(source), "--out", str(build)]) == 0
    assert json.loads((build / "build_report.json").read_text())["source"] == str(source)
    staged = Path(push_dataset(build, "me/paper-agg", dry_run=True, out_dir=tmp_path / "staged"))
    card = DatasetCard((staged / "README.md").read_text())
    assert "converted by `rsa augment --import` (rsa-rl) from `paper_agg.parquet`" in card.text
    assert "| rows | 3 |" in card.text and "| kinds | plain 3 |" in card.text and "| tasks | math 3 |" in card.text
    assert json.loads((staged / "build_report.json").read_text())["source"] == "paper_agg.parquet"
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "build_report.json", "train.parquet"]
    assert_no_local_paths(staged, tmp_path)
    with pytest.raises(ValueError, match=r"no train.parquet; build the dataset with `rsa augment"):
        push_dataset(tmp_path / "empty", "me/x", dry_run=True)


def test_rsa_augment_push_to_hub(hub, tiny_model_dir, tmp_path, capsys):
    """`rsa augment --push_to_hub --hub_model_id REPO` builds, then pushes the folder as a dataset repo with its card."""
    out = tmp_path / "agg"
    argv = ["augment", "--model", tiny_model_dir, "--engine", "hf", "--dtype", "float32", "--dataset",
            "rg:basic_arithmetic", "--size", "3", "--num-candidates", "2", "--k", "2", "--candidate-max-tokens", "8",
            "--train-context-len", "512", "--max-completion-length", "16", "--out", str(out), "--no-progress",
            "--push_to_hub", "--hub_model_id", "me/agg-cli", "--hub-private", "--hub-revision", "v1"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert hub.repos["dataset/me/agg-cli"]["visibility"] == "private"
    (commit,) = hub.commits
    assert commit["revision"] == "v1" and {"README.md", "train.parquet"} <= set(commit["files"])
    assert "pushed to the Hub:" in capsys.readouterr().out


def test_rsa_augment_push_to_hub_refused_offline_before_any_work(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "agg"
    argv = ["augment", "--model", tiny_model_dir, "--engine", "hf", "--dataset", "rg:basic_arithmetic", "--size", "3",
            "--out", str(out), "--push-to-hub", "--hub-model-id", "me/agg-cli"]  # fmt: skip
    assert main(argv) == 2
    assert "offline" in capsys.readouterr().err and not out.exists()
