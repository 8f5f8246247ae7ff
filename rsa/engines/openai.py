"""Engine for any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, hosted APIs).

One HTTP request per completion (the `n` parameter is never used, so every candidate has its own
seed and a failure costs one candidate's retry, not a batch's). Requests run concurrently under a
semaphore and are spread over several base URLs: each goes to the least-loaded URL (fewest requests
in flight, ties in turn), skipping URLs that failed in the last few seconds while others are up.

Retries: timeouts, connection errors, HTTP 429 and 5xx are retried with exponential backoff and
full jitter (a 429's Retry-After is honoured up to `backoff_max`); other 4xx answers fail at once.
When a request still fails, `generate` raises `EngineError` naming the URLs and the last error (the
RSA loop, through `agenerate_one`, records that one request as failed and goes on).

Stalled servers: while requests are in flight, a watchdog asks every URL's `/models` each
`health_interval` seconds (30). A URL that misses `health_failures` (3) checks in a row is reported
(logged as an error naming it) and routed around: its requests in flight are cancelled and retried on
the other URLs, and it gets requests again once it answers. A URL with requests in flight that has
completed none for `stall_warning` seconds (300) is reported too. So a dead or hung server is noticed
within about 1.5 minutes, not after `request_timeout` (1800 s per attempt by default: room for a
32k-token trace at 20 tokens/s).

Guarantee: the per-request seed is sent as `seed`; whether it makes a completion reproducible is up
to the server (vLLM honours it per request). Token counts come from the response's `usage`.
`count_tokens` uses a local HF tokenizer (`tokenizer=` path, or `model` when it is a local
directory); without one it approximates 4 characters per token and logs a warning saying so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsa.engines.base import (
    Engine,
    EngineError,
    Generation,
    SamplingParams,
    batch_seeds,
    check_reasoning_mode,
    merge_reasoning,
)
from rsa.types import Conversation

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the approximation used by count_tokens when no tokenizer is available
_RETRY_STATUS = frozenset({408, 429})  # plus every 5xx


class _RetryableError(Exception):
    """One attempt failed in a way worth retrying (timeout, connection, 429, 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _parse_base_urls(base_urls: str | Sequence[str]) -> list[str]:
    urls = base_urls.split(",") if isinstance(base_urls, str) else list(base_urls)
    urls = [u.strip().rstrip("/") for u in urls if u and u.strip()]
    if not urls:
        raise ValueError("openai engine needs at least one base URL, e.g. http://127.0.0.1:8000/v1")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base URL {url!r} must start with http:// or https://")
    return urls


class OpenAIEngine(Engine):
    """Chat completions over HTTP against one or more OpenAI-compatible servers.

    `model`: the served model name. `base_urls`: one URL, a comma-separated string or a list (each
    ending in /v1). `api_key`: defaults to $OPENAI_API_KEY, else "EMPTY". `tokenizer`: local HF
    tokenizer path for `count_tokens` and for capping `max_tokens` to the context. `max_model_len`:
    defaults to what the server's /models reports. `max_concurrency`: requests in flight at once,
    over all URLs. `max_retries`: retries per request after the first attempt. `backoff_base`,
    `backoff_max`: seconds. `request_timeout`: seconds to wait for one response; `connect_timeout`:
    seconds to connect. `health_interval`, `health_failures`, `stall_warning`: the stalled-server
    watchdog (see the module docstring). `reasoning`: "separate", "strip" or "keep". `extra_body`: more JSON fields
    for every request (e.g. {"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}}).
    """

    name = "openai"
    supports_async = True

    def __init__(
        self,
        model: str,
        *,
        base_urls: str | Sequence[str] = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        tokenizer: str | None = None,
        max_model_len: int | None = None,
        max_concurrency: int = 64,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        request_timeout: float = 1800.0,
        connect_timeout: float = 10.0,
        health_interval: float = 30.0,
        health_failures: int = 3,
        stall_warning: float = 300.0,
        reasoning: str = "separate",
        extra_body: dict[str, Any] | None = None,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.model = model
        self.base_urls = _parse_base_urls(base_urls)
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        if health_interval <= 0 or health_failures < 1:
            raise ValueError("health_interval must be > 0 and health_failures >= 1")
        self.health_interval = health_interval
        self.health_failures = health_failures
        self.stall_warning = stall_warning
        self.reasoning = check_reasoning_mode(reasoning)
        self.extra_body = dict(extra_body or {})
        if "n" in self.extra_body:
            raise ValueError("extra_body may not set 'n': the openai engine sends one request per completion")

        self.tokenizer = self._load_tokenizer(tokenizer)
        self.tokens_are_approximate = self.tokenizer is None
        if self.tokens_are_approximate:
            logger.warning(
                "openai engine: no local tokenizer for %r; count_tokens approximates %d characters per token "
                "(pass tokenizer=<local path> for exact counts)",
                model,
                CHARS_PER_TOKEN,
            )
        self._max_model_len = max_model_len

        # Load balancing state: requests in flight and the time until which a URL is avoided.
        self._in_flight = dict.fromkeys(self.base_urls, 0)
        self._avoid_until = dict.fromkeys(self.base_urls, 0.0)
        # watchdog state: URLs taken to be down (since when), attempts in flight per URL, last completion
        self._down: dict[str, float] = {}
        self._attempts: dict[str, set[asyncio.Future]] = {u: set() for u in self.base_urls}
        self._last_done = dict.fromkeys(self.base_urls, 0.0)
        self._turn = itertools.count()
        #: attempts that were retried during the last `generate` call (for logs and tests)
        self.last_retries = 0
        # (event loop, HTTP client, semaphore) of `agenerate_one`, bound to the loop that made them
        self._session_state: tuple[Any, Any, asyncio.Semaphore, asyncio.Task] | None = None

    def _load_tokenizer(self, path: str | None) -> Any:
        candidate = path or (self.model if Path(self.model).is_dir() else None)
        if candidate is None:
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(candidate)

    # ----- Engine interface ----------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under the local tokenizer, else an approximation (len / 4, at least 1)."""
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return max(1, round(len(text) / CHARS_PER_TOKEN)) if text else 0

    @property
    def max_model_len(self) -> int:
        """The context length: as given, else the `max_model_len` the first server's /models reports."""
        if self._max_model_len is None:
            self._max_model_len = self._fetch_max_model_len()
        return self._max_model_len

    def _fetch_max_model_len(self) -> int:
        import httpx

        url = f"{self.base_urls[0]}/models"
        try:
            response = httpx.get(url, headers=self._headers(), timeout=self.connect_timeout)
            response.raise_for_status()
            cards = response.json().get("data", [])
        except (httpx.HTTPError, ValueError) as exc:
            raise EngineError(f"could not read max_model_len from {url} ({exc}); pass max_model_len=") from exc
        for card in cards:
            if card.get("id") == self.model and card.get("max_model_len"):
                return int(card["max_model_len"])
        raise EngineError(f"{url} does not report max_model_len for model {self.model!r}; pass max_model_len=")

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One completion per conversation, in order (runs `agenerate` on an event loop)."""
        coroutine = self.agenerate(conversations, params, seeds)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        # Called from inside a running loop (a notebook, an async app): use a private loop in a thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coroutine).result()

    async def agenerate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Async `generate`: all requests concurrently (at most `max_concurrency` in flight)."""
        import httpx

        per_request = batch_seeds(len(conversations), params, seeds)
        if not conversations:
            return []
        max_tokens = self._max_tokens(conversations, params)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        self.last_retries = 0
        timeout = httpx.Timeout(self.request_timeout, connect=self.connect_timeout)
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers()) as client:
            watchdog = asyncio.ensure_future(self._watch(client))

            async def one(index: int) -> Generation:
                body = self._request_body(conversations[index], params, max_tokens[index], per_request[index])
                async with semaphore:
                    return await self._complete(client, body, f"request {index}")

            tasks = [asyncio.ensure_future(one(i)) for i in range(len(conversations))]
            try:
                results = await asyncio.gather(*tasks)
            finally:
                # On the first failure, stop the requests still waiting or in flight.
                for task in [*tasks, watchdog]:
                    task.cancel()
                await asyncio.gather(*tasks, watchdog, return_exceptions=True)
        if self.last_retries:
            logger.info("openai engine: %d completions, %d retried attempts", len(results), self.last_retries)
        return list(results)

    async def agenerate_one(
        self, conversation: Conversation, params: SamplingParams, seed: int | None = None
    ) -> Generation:
        """One completion while others run (at most `max_concurrency` in flight over all callers on this loop)."""
        _, client, semaphore, _ = self._session()
        try:
            max_tokens = self._max_tokens([conversation], params)[0]
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        body = self._request_body(conversation, params, max_tokens, seed)
        async with semaphore:
            return await self._complete(client, body, "request" if seed is None else f"request (seed {seed})")

    @property
    def in_flight(self) -> int:
        """HTTP requests in flight over every base URL."""
        return sum(self._in_flight.values())

    async def aclose(self) -> None:
        """Close the HTTP client `agenerate_one` opened on the running event loop."""
        state, self._session_state = self._session_state, None
        if state is not None and state[0] is asyncio.get_running_loop():
            state[3].cancel()
            await asyncio.gather(state[3], return_exceptions=True)
            await state[1].aclose()

    def _session(self) -> tuple[Any, Any, asyncio.Semaphore, asyncio.Task]:
        import httpx

        loop = asyncio.get_running_loop()
        if self._session_state is None or self._session_state[0] is not loop:
            timeout = httpx.Timeout(self.request_timeout, connect=self.connect_timeout)
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            client = httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers())
            watchdog = asyncio.ensure_future(self._watch(client))
            self._session_state = (loop, client, asyncio.Semaphore(self.max_concurrency), watchdog)
        return self._session_state

    # ----- stalled servers ---------------------------------------------------------------------
    async def _healthy(self, client: Any, url: str) -> bool:
        import httpx

        try:
            response = await client.get(f"{url}/models", timeout=min(self.health_interval, self.connect_timeout))
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    async def _watch(self, client: Any) -> None:
        """Health-check the URLs while requests are in flight; route around those that stop answering."""
        misses = dict.fromkeys(self.base_urls, 0)
        while True:
            await asyncio.sleep(self.health_interval)
            now = time.monotonic()
            for url in self.base_urls:
                if not self._in_flight[url] and url not in self._down:
                    misses[url] = 0
                    continue
                if self._in_flight[url] and self._last_done[url] and now - self._last_done[url] > self.stall_warning:
                    logger.warning(
                        "openai engine: %s has %d requests in flight and completed none for %.0f s",
                        url, self._in_flight[url], now - self._last_done[url],
                    )  # fmt: skip
                    self._last_done[url] = now  # warn once per period
                if await self._healthy(client, url):
                    if url in self._down:
                        logger.warning("openai engine: %s answers again; sending it requests", url)
                        del self._down[url]
                    misses[url] = 0
                    continue
                misses[url] += 1
                if misses[url] >= self.health_failures and url not in self._down:
                    self._down[url] = now
                    attempts = list(self._attempts[url])
                    logger.error(
                        "openai engine: %s missed %d health checks in a row (%.0f s): taken as down; its %d "
                        "request(s) in flight are retried on the other URLs",
                        url, misses[url], misses[url] * self.health_interval, len(attempts),
                    )  # fmt: skip
                    for attempt in attempts:
                        attempt.cancel()

    # ----- requests ------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _max_tokens(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[int]:
        """`max_new_tokens`, capped by the room left in the context when the prompt can be counted exactly."""
        if self.tokenizer is None or self._max_model_len is None:
            return [params.max_new_tokens] * len(conversations)
        limits = []
        for i, conversation in enumerate(conversations):
            text = self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
            prompt_len = self.count_tokens(text)
            room = self._max_model_len - prompt_len
            if room < 1:
                raise ValueError(
                    f"conversation {i}: prompt has {prompt_len} tokens, no room left in max_model_len={self._max_model_len}"
                )
            limits.append(min(params.max_new_tokens, room))
        return limits

    def _request_body(
        self, conversation: Conversation, params: SamplingParams, max_tokens: int, seed: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(conversation),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": max_tokens,
            **self.extra_body,
        }
        if seed is not None:
            body["seed"] = seed
        return body

    def _pick_url(self, avoid: str | None) -> str:
        """Least-loaded URL among those not recently failing (and not `avoid`, when there is a choice)."""
        now = time.monotonic()
        up = [u for u in self.base_urls if u not in self._down]
        if not up:
            raise _RetryableError(f"every server is down (no answer to health checks): {', '.join(sorted(self._down))}")
        candidates = [u for u in up if self._avoid_until[u] <= now and u != avoid]
        if not candidates:
            candidates = [u for u in up if u != avoid] or up
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda u: self._in_flight[u])

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff; a server's Retry-After is a floor (capped by backoff_max)."""
        delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    async def _complete(self, client: Any, body: dict[str, Any], label: str) -> Generation:
        """Send one request with retries; return its Generation or raise EngineError."""
        errors: list[str] = []
        url: str | None = None
        for attempt in range(self.max_retries + 1):
            try:
                url = self._pick_url(avoid=url if errors else None)
                return await self._attempt(client, url, body, label)
            except _RetryableError as exc:
                errors.append(str(exc))
                if url is not None:
                    self._avoid_until[url] = time.monotonic() + min(self.backoff_max, self.backoff_base * 2**attempt)
                if attempt == self.max_retries:
                    break
                self.last_retries += 1
                delay = self._backoff(attempt, exc.retry_after)
                logger.debug("%s: %s; retry %d in %.2f s", label, exc, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise EngineError(
            f"{label} failed after {len(errors)} attempt(s) against {', '.join(self.base_urls)}; "
            f"last error: {errors[-1]}"
        )

    async def _attempt(self, client: Any, url: str, body: dict[str, Any], label: str) -> Generation:
        import httpx

        endpoint = f"{url}/chat/completions"
        self._in_flight[url] += 1
        if not self._last_done[url]:
            self._last_done[url] = time.monotonic()
        post = asyncio.ensure_future(client.post(endpoint, json=body))
        self._attempts[url].add(post)
        try:
            response = await post
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller was cancelled
            raise _RetryableError(f"{endpoint}: server taken as down (no answer to health checks)") from None
        except httpx.TimeoutException as exc:
            raise _RetryableError(f"{endpoint}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise _RetryableError(
                f"{endpoint}: cannot connect or connection lost ({type(exc).__name__}: {exc})"
            ) from exc
        finally:
            self._in_flight[url] -= 1
            self._attempts[url].discard(post)
            if not post.done():
                post.cancel()
        self._last_done[url] = time.monotonic()
        status = response.status_code
        if status == 429 or status >= 500 or status in _RETRY_STATUS:
            raise _RetryableError(
                f"{endpoint}: HTTP {status} {response.text[:200]!r}", retry_after=_retry_after(response)
            )
        if status != 200:
            raise EngineError(f"{endpoint} rejected {label} with HTTP {status}: {response.text[:1000]}")
        try:
            return self._parse(response.json())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"{endpoint} answered {label} with an unexpected body: {response.text[:500]}") from exc

    def _parse(self, data: dict[str, Any]) -> Generation:
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content") or ""
        # vLLM and others name it `reasoning_content` (newer vLLM: `reasoning`).
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        text, kept = merge_reasoning(content, reasoning, self.reasoning)
        usage = data.get("usage") or {}
        num_tokens = usage.get("completion_tokens")
        if num_tokens is None:
            num_tokens = self.count_tokens(content + (reasoning or ""))
            logger.debug("response without usage; counted %d completion tokens locally", num_tokens)
        prompt_tokens = usage.get("prompt_tokens")
        return Generation(
            text=text,
            num_tokens=int(num_tokens),
            finish_reason=choice.get("finish_reason") or "stop",
            reasoning=kept,
            prompt_tokens=int(prompt_tokens) if prompt_tokens is not None else None,
        )


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
