"""`rsa serve`: an OpenAI-compatible chat-completions server whose every answer comes from an RSA run.

    rsa serve --model models/tiny --engine vllm --population 8 --k 4 --steps 5 --port 8000
    client.chat.completions.create(model="tiny", messages=[...], extra_body={"rsa": {"steps": 3}})

Each `POST /v1/chat/completions` is one problem: its user message is the question, the server's task
(`--task`, default math) gives the plain and aggregation prompts, the answer extraction and the equivalence
used by the majority vote. The request runs RSA (N plain samples, then T-1 aggregation steps) with the same
seeds and aggregation sets as `rsa eval` runs that question as problem 0 with the same run seed, so both
give the same answer. The reply's content is the text of the member the final rule chose; `usage` counts
every prompt and completion token of the whole run.

Requests share one engine: each runs its own steps and submits its generations as soon as they can run
(the engines' async path; the hf engine has none, so its steps run one batch at a time in a worker
thread). A bounded number run at once (`--max-active`), a bounded number wait (`--max-queue`), the rest
get 429 with `Retry-After`. A request whose client disconnects, or that passes its deadline, is
cancelled with its generations in flight (vllm aborts them; openai closes their HTTP requests; hf finishes
the batch it is in). A step whose every generation failed ends the request with 503; the openai engine
fails over between backends before that.

Every request is checked before anything is generated: malformed JSON, missing or unsupported fields,
unknown `rsa` fields, N < K, T < 1, a question that does not fit the model's context all get 400 with an
OpenAI-style error body naming the field. The server binds 127.0.0.1 unless given an API key
(`rsa.configs.ServeConfig`); keys are compared in constant time; prompts are logged only with
`--log-prompts`. docs/SERVE.md has the request format, the metrics and the client examples.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rsa.configs import ServeConfig, auto_max_new_tokens
from rsa.engines.base import Engine, EngineError
from rsa.fitting import ContextBudgetError
from rsa.loop import FINAL_RULES, LoopConfig, Member, RSALoop, final_answers
from rsa.loop import agreement as population_agreement
from rsa.schedule import Groups, run_async, run_batched
from rsa.tasks import Problem

logger = logging.getLogger(__name__)

#: fields of a request's `rsa` object and the LoopConfig field each sets (None: handled by the server)
RSA_FIELDS: dict[str, str | None] = {
    "population": "population",
    "k": "k",
    "steps": "steps",
    "final": "final",
    "seed": "seed",
    "stop_agreement": "stop_agreement",
    "timeout": None,
    "return_population": None,
}
#: OpenAI request fields that ask for something an RSA answer cannot give; refused rather than ignored
UNSUPPORTED_FIELDS = ("tools", "functions", "tool_choice", "function_call", "logprobs", "top_logprobs", "audio")
RETRY_AFTER_S = 1  # what a 429 tells the client to wait


class RequestError(Exception):
    """A request the server refuses: its HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        """The JSON body OpenAI clients parse into their error objects."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class ChatJob:
    """One validated chat-completion request: the problem, its RSA settings and how to answer."""

    id: str
    problem: Problem
    loop: LoopConfig
    timeout: float
    stream: bool = False
    include_usage: bool = False
    return_population: bool = False
    #: the request's loop on the service's engine, built once when `RSAService.parse` checks its context
    runner: RSALoop | None = field(default=None, repr=False, compare=False)


@dataclass
class RSAResult:
    """What one request's RSA run produced."""

    member: Member
    answer: str | None
    population: list[Member]
    agreement: list[float]  # per step: the share of members in the largest answer cluster
    prompt_tokens: int
    completion_tokens: int
    generations: int

    @property
    def stopped_at(self) -> int | None:
        """Early stopping: the step whose population was carried to the last step (None when every step ran)."""
        return self.population[0].carried_from if self.population else None


@dataclass
class ServeMetrics:
    """Counters a Prometheus scrape reads from `/metrics`."""

    active: int = 0
    queued: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generations: int = 0
    generation_failures: int = 0
    cancelled: int = 0
    responses: Counter = field(default_factory=Counter)

    def render(self, engine_in_flight: int) -> str:
        """The counters in Prometheus' text exposition format."""
        lines = []

        def metric(name: str, kind: str, help_text: str, samples: Sequence[tuple[str, float]]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{labels} {value}" for labels, value in samples)

        metric("rsa_requests_in_flight", "gauge", "RSA requests running now", [("", self.active)])
        metric("rsa_requests_queued", "gauge", "RSA requests waiting for a slot", [("", self.queued)])
        metric(
            "rsa_requests_total",
            "counter",
            "chat-completion requests answered, by HTTP status",
            [(f'{{status="{status}"}}', count) for status, count in sorted(self.responses.items())],
        )
        metric(
            "rsa_requests_cancelled_total",
            "counter",
            "requests cancelled (disconnect, deadline)",
            [("", self.cancelled)],
        )
        metric("rsa_steps_total", "counter", "RSA steps completed over all requests", [("", self.steps)])
        metric("rsa_generations_total", "counter", "generations completed", [("", self.generations)])
        metric(
            "rsa_generation_failures_total",
            "counter",
            "generations failed after retries",
            [("", self.generation_failures)],
        )
        metric(
            "rsa_tokens_total",
            "counter",
            "tokens of all RSA generations",
            [('{kind="prompt"}', self.prompt_tokens), ('{kind="completion"}', self.completion_tokens)],
        )
        metric(
            "rsa_engine_requests_in_flight", "gauge", "generation requests in the engine now", [("", engine_in_flight)]
        )
        return "\n".join(lines) + "\n"


# ----- request parsing ------------------------------------------------------------------------------------------
def _integer(value: Any, param: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"'{param}' must be an integer, got {json.dumps(value)}", param=param)
    if value < low:
        raise RequestError(400, f"'{param}' must be >= {low}, got {value}", param=param)
    return value


def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(400, f"'{param}' must be a finite number, got {json.dumps(value)}", param=param)
    return float(value)


def _message_text(message: Any, index: int) -> tuple[str, str]:
    """(role, text) of one request message; text parts of a content list are joined."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise RequestError(400, f"'{where}' must be an object with 'role' and 'content'", param=where)
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str):
        raise RequestError(400, f"'{where}.role' is missing", param=f"{where}.role")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(
                    400, f"'{where}.content[{j}]': only text parts are supported", param=f"{where}.content"
                )
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise RequestError(400, f"'{where}.content' must be a string or a list of text parts", param=f"{where}.content")
    return role, content


def parse_chat_request(body: Any, config: ServeConfig, *, model_name: str, max_new_tokens: int) -> ChatJob:
    """Validate a chat-completion body against the server's defaults; RequestError (400/404) names the field."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' is required", param="model")
    if model != model_name:
        raise RequestError(404, f"model {model!r} is not served here; this server serves {model_name!r}", param="model")
    for name in UNSUPPORTED_FIELDS:
        if body.get(name) not in (None, False, [], 0):
            raise RequestError(
                400, f"'{name}' is not supported by rsa serve (answers are RSA's final member)", param=name
            )
    if body.get("n", 1) != 1:
        raise RequestError(
            400, "'n' must be 1: one request gives one RSA answer (use N in 'rsa.population')", param="n"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' is required: a non-empty list of messages", param="messages")
    turns = [_message_text(m, i) for i, m in enumerate(messages)]
    if len(turns) != 1 or turns[0][0] != "user":
        raise RequestError(
            400,
            "'messages' must hold exactly one user message, the question RSA answers (system prompts and earlier "
            "turns are not supported: the task's prompts frame the question)",
            param="messages",
        )
    question = turns[0][1]
    if not question.strip():
        raise RequestError(400, "'messages[0].content' is empty", param="messages[0].content")

    overrides: dict[str, Any] = {}
    if body.get("temperature") is not None:
        overrides["temperature"] = _number(body["temperature"], "temperature")
    if body.get("top_p") is not None:
        overrides["top_p"] = _number(body["top_p"], "top_p")
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    overrides["max_new_tokens"] = _integer(tokens, param, 1) if tokens is not None else max_new_tokens
    if body.get("seed") is not None:
        overrides["seed"] = _integer(body["seed"], "seed", 0)
    options = body.get("rsa") or {}
    if not isinstance(options, dict):
        raise RequestError(400, '\'rsa\' must be an object (e.g. {"population": 8, "k": 4, "steps": 3})', param="rsa")
    unknown = sorted(set(options) - set(RSA_FIELDS))
    if unknown:
        raise RequestError(
            400,
            f"unknown field(s) rsa.{', rsa.'.join(unknown)}; known: {', '.join(RSA_FIELDS)}",
            param=f"rsa.{unknown[0]}",
        )
    for name in ("population", "k", "steps"):
        if name in options:
            overrides[name] = _integer(options[name], f"rsa.{name}", 1)
    if "seed" in options:
        overrides["seed"] = _integer(options["seed"], "rsa.seed", 0)
    if "final" in options:
        overrides["final"] = options["final"]
    if "stop_agreement" in options:  # a share in (0, 1], or null to run every step (LoopConfig checks the value)
        overrides["stop_agreement"] = options["stop_agreement"]
    timeout = config.request_timeout
    if options.get("timeout") is not None:
        timeout = min(timeout, _number(options["timeout"], "rsa.timeout"))
        if timeout <= 0:
            raise RequestError(400, "'rsa.timeout' must be > 0 seconds", param="rsa.timeout")
    if overrides.get("final", config.final) not in FINAL_RULES:
        raise RequestError(400, f"'rsa.final' must be one of {', '.join(FINAL_RULES)}", param="rsa.final")
    population, k = overrides.get("population", config.population), overrides.get("k", config.k)
    if k > population:
        raise RequestError(400, f"K ({k}) must be <= N ({population}): an aggregation set draws K distinct members",
                           param="rsa.k" if "k" in overrides else "rsa.population")  # fmt: skip
    try:
        loop = config.loop_config(**overrides)
    except ValueError as exc:  # an out-of-range sampling value or stopping share
        param = "rsa.stop_agreement" if "stop_agreement" in str(exc) else None
        raise RequestError(400, str(exc), param=param) from None
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError(400, "'stream_options' must be an object", param="stream_options")
    job_id = f"chatcmpl-{uuid.uuid4().hex}"
    problem = Problem(id=job_id, task=config.task, question=question, answer=None)
    return ChatJob(
        id=job_id,
        problem=problem,
        loop=loop,
        timeout=timeout,
        stream=bool(body.get("stream", False)),
        include_usage=bool(stream_options.get("include_usage", False)),
        return_population=bool(options.get("return_population", False)),
    )


# ----- running RSA for requests -----------------------------------------------------------------------------------
class RSAService:
    """Runs one RSA per request on a shared engine, with admission control, metrics and cancellation."""

    def __init__(self, engine: Engine, config: ServeConfig) -> None:
        self.engine = engine
        self.config = config
        self.model_name = config.served_model_name or config.model
        self.max_new_tokens = config.max_new_tokens or auto_max_new_tokens(engine.max_model_len)
        if self.max_new_tokens >= engine.max_model_len:
            raise ValueError(
                f"--max-new-tokens {self.max_new_tokens} leaves no room for a prompt in the engine's context of "
                f"{engine.max_model_len} tokens"
            )
        self.metrics = ServeMetrics()
        self._slots: asyncio.Semaphore | None = None
        self._batch_lock: asyncio.Lock | None = None
        self._admitted = 0
        self.created = int(time.time())

    def parse(self, body: Any) -> ChatJob:
        """Validate a request body and check its prompts fit the context (400 before any generation)."""
        job = parse_chat_request(body, self.config, model_name=self.model_name, max_new_tokens=self.max_new_tokens)
        if job.loop.max_new_tokens >= self.engine.max_model_len:
            raise RequestError(
                400,
                f"max_tokens {job.loop.max_new_tokens} leaves no room for a prompt in the model's context of "
                f"{self.engine.max_model_len} tokens",
                param="max_tokens",
            )
        job.runner = RSALoop(self.engine, [job.problem], job.loop)
        try:
            job.runner.check_context()
        except ContextBudgetError as exc:
            raise RequestError(400, f"the question does not fit the model's context: {exc}", param="messages") from None
        if self.config.log_prompts:
            logger.info("%s: question %r", job.id, job.problem.question)
        else:
            logger.info("%s: question of %d characters, N=%d K=%d T=%d", job.id, len(job.problem.question),
                        job.loop.population, job.loop.k, job.loop.steps)  # fmt: skip
        return job

    def admit(self) -> None:
        """Take a place (running or queued) for one request; RequestError 429 when the queue is full."""
        if self._admitted >= self.config.max_active + self.config.max_queue:
            raise RequestError(
                429,
                f"the server is at capacity ({self.config.max_active} running, {self.config.max_queue} queued); "
                f"retry after {RETRY_AFTER_S} s",
                kind="rate_limit_exceeded",
            )
        self._admitted += 1

    def leave(self) -> None:
        """Give back the place taken by `admit`."""
        self._admitted -= 1

    async def run(self, job: ChatJob, on_step: Callable[[int, float], None] | None = None) -> RSAResult:
        """RSA for one admitted request: waits for a running slot, then runs its T steps."""
        if self._slots is None:  # created on the serving event loop
            self._slots = asyncio.Semaphore(self.config.max_active)
            self._batch_lock = asyncio.Lock()
        self.metrics.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.metrics.queued -= 1
        self.metrics.active += 1
        try:
            return await self._rsa(job, on_step)
        finally:
            self.metrics.active -= 1
            self._slots.release()

    async def _rsa(self, job: ChatJob, on_step: Callable[[int, float], None] | None) -> RSAResult:
        loop = job.runner or RSALoop(self.engine, [job.problem], job.loop)
        task = loop.tasks[0]
        history: list[list[Member]] = []
        agreement: list[float] = []

        def report(step, problem_index, population, regenerated, tokens, started, finished) -> None:
            fresh = [m for m in population if m.carried_from is None]  # early stopping carries, not generates
            failed = sum(m.failed for m in fresh)
            self.metrics.generations += regenerated - failed
            self.metrics.generation_failures += failed
            self.metrics.prompt_tokens += sum(m.prompt_tokens or 0 for m in fresh)
            self.metrics.completion_tokens += tokens
            if failed == len(population):  # nothing to aggregate: the backend is down or refuses this question
                raise EngineError(f"every generation of step {step} failed; last error: {population[-1].error}")
            agreement.append(population_agreement(task, job.problem, population))
            history.append(population)
            self.metrics.steps += 1
            if on_step is not None:
                on_step(step, agreement[-1])

        groups = Groups(loop, [None], {}, report)
        steps = range(1, job.loop.num_steps + 1)
        if getattr(self.engine, "supports_async", False):
            await run_async(groups, loop.calls, steps, None, barrier=False)
        else:  # one batch per step in a worker thread; one request's batch at a time on the engine
            async with self._batch_lock:
                await asyncio.to_thread(run_batched, groups, loop.calls, steps, None)
        final = history[-1]
        (chosen,) = final_answers([job.problem], [final], job.loop.final, job.loop.seed)
        member = final[chosen["member"]] if chosen["member"] is not None else final[0]
        every = [m for population in history for m in population if m.carried_from is None]
        return RSAResult(
            member=member,
            answer=chosen["answer"],
            population=final,
            agreement=agreement,
            prompt_tokens=sum(m.prompt_tokens or 0 for m in every),
            completion_tokens=sum(m.num_tokens for m in every),
            generations=sum(not m.failed for m in every),
        )

    # ----- responses -----------------------------------------------------------------------------------------
    def completion(self, job: ChatJob, result: RSAResult) -> dict:
        """The chat.completion object of a finished request."""
        return {
            "id": job.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.member.text},
                    "finish_reason": _finish_reason(result.member),
                }
            ],
            "usage": self.usage(result),
            "rsa": self.rsa_details(job, result),
        }

    @staticmethod
    def usage(result: RSAResult) -> dict:
        """Token usage of the whole RSA run."""
        total = result.prompt_tokens + result.completion_tokens
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": total,
        }

    @staticmethod
    def rsa_details(job: ChatJob, result: RSAResult) -> dict:
        """The RSA part of a reply: settings, answer, per-step agreement, and the population when asked."""
        details = {
            "population": job.loop.population,
            "k": job.loop.k,
            "steps": job.loop.steps,
            "seed": job.loop.seed,
            "final": job.loop.final,
            "answer": result.answer,
            "agreement": result.agreement,
            "generations": result.generations,
        }
        if job.loop.stop_agreement is not None:
            details["stop_agreement"] = job.loop.stop_agreement
            details["stopped_at"] = result.stopped_at
        if job.return_population:
            details["members"] = [
                {"text": m.text, "answer": m.extracted, "parents": list(m.parents), "finish_reason": m.finish_reason}
                for m in result.population
            ]
        return details

    def chunk(self, job: ChatJob, delta: dict, finish_reason: str | None = None, **extra: Any) -> dict:
        """One chat.completion.chunk object of a streamed reply."""
        return {
            "id": job.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if delta is not None else [],
            **extra,
        }

    def models(self) -> dict:
        """The /v1/models list."""
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "created": self.created, "owned_by": "rsa-rl"}],
        }


def _finish_reason(member: Member) -> str:
    return "length" if member.finish_reason == "length" else "stop"


# ----- the HTTP layer -----------------------------------------------------------------------------------------
def build_app(service: RSAService):
    """The FastAPI application of `rsa serve` around `service`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from sse_starlette import EventSourceResponse, ServerSentEvent

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await service.engine.aclose()  # the engine's async resources belong to this event loop

    app = FastAPI(title="rsa serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    key = service.config.api_key

    def error_response(exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    def authorize(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise RequestError(
                401, "missing or wrong API key (send 'Authorization: Bearer KEY')", kind="authentication_error"
            )

    async def read_json(request: Request) -> Any:
        limit = service.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"the request body is over the server's limit of {limit} bytes")
        data = bytearray()
        async for piece in request.stream():
            data.extend(piece)
            if len(data) > limit:
                raise RequestError(413, f"the request body is over the server's limit of {limit} bytes")
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"the request body is not valid JSON ({exc})") from None

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "in_flight": service.metrics.active, "queued": service.metrics.queued})

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        try:
            authorize(request)
        except RequestError as exc:
            return error_response(exc)
        return JSONResponse(service.models())

    @app.get("/metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        try:
            authorize(request)
        except RequestError as exc:
            return error_response(exc)
        return PlainTextResponse(
            service.metrics.render(service.engine.in_flight), media_type="text/plain; version=0.0.4"
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            authorize(request)
            job = service.parse(await read_json(request))
            service.admit()
        except RequestError as exc:
            service.metrics.responses[exc.status] += 1
            return error_response(exc)
        if job.stream:
            return EventSourceResponse(_stream(job), sep="\n", ping=15)
        try:
            result = await _run_until_done(request, job)
        except RequestError as exc:
            service.metrics.responses[exc.status] += 1
            return error_response(exc)
        finally:
            service.leave()
        service.metrics.responses[200] += 1
        return JSONResponse(service.completion(job, result))

    async def _run_until_done(request: Request, job: ChatJob) -> RSAResult:
        """The request's RSA result; cancelled when the client goes away or the deadline passes."""
        run = asyncio.ensure_future(service.run(job))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({run, gone}, timeout=job.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if run not in done:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            service.metrics.cancelled += 1
            if gone in done:
                raise RequestError(499, "the client closed the connection; the request was cancelled")
            raise RequestError(
                504, f"the RSA run did not finish within {job.timeout:g} s; it was cancelled", kind="timeout"
            )
        try:
            return run.result()
        except EngineError as exc:
            raise RequestError(503, f"the generation backend failed: {exc}", kind="backend_unavailable") from None

    async def _stream(job: ChatJob):
        """Progress as SSE comments (clients ignore them), then the answer as chat.completion.chunk events."""
        progress: asyncio.Queue = asyncio.Queue()
        run = asyncio.ensure_future(service.run(job, on_step=lambda step, share: progress.put_nowait((step, share))))
        deadline = time.monotonic() + job.timeout
        status = 200
        try:
            yield {"data": json.dumps(service.chunk(job, {"role": "assistant", "content": ""}))}
            while not run.done():
                waiter = asyncio.ensure_future(progress.get())
                done, _ = await asyncio.wait({run, waiter}, timeout=max(0.0, deadline - time.monotonic()),
                                             return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if waiter in done:
                    step, share = waiter.result()
                    yield ServerSentEvent(comment=f"step {step}/{job.loop.num_steps} agreement {share:.3f}")
                else:
                    waiter.cancel()
                if not done:
                    raise RequestError(504, f"the RSA run did not finish within {job.timeout:g} s", kind="timeout")
            try:
                result = run.result()
            except EngineError as exc:
                raise RequestError(503, f"the generation backend failed: {exc}", kind="backend_unavailable") from None
            yield {"data": json.dumps(service.chunk(job, {"content": result.member.text}))}
            yield {
                "data": json.dumps(
                    service.chunk(job, {}, _finish_reason(result.member), rsa=service.rsa_details(job, result))
                )
            }
            if job.include_usage:
                yield {"data": json.dumps(service.chunk(job, None, usage=service.usage(result)))}
            yield {"data": "[DONE]"}
        except RequestError as exc:
            status = exc.status
            yield {"data": json.dumps(exc.body())}
        except asyncio.CancelledError:  # the client went away
            status = 499
            service.metrics.cancelled += 1
            raise
        finally:
            if not run.done():
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
            service.leave()
            service.metrics.responses[status] += 1

    return app


async def _disconnected(request) -> None:
    """Return when the client of `request` disconnects (its body already read)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


# ----- running the server ------------------------------------------------------------------------------------------
def bind(service: RSAService):
    """A uvicorn server for `service` on a socket bound to the config's host and port: (server, socket, base URL).

    Run it with `server.run(sockets=[sock])` (blocking; a thread may run it too).
    """
    import socket

    import uvicorn

    config = service.config
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    port = sock.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    app = build_app(service)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    return server, sock, f"http://{host}:{port}/v1"


def serve(config: ServeConfig, *, ready: Callable[[str], None] | None = None) -> None:
    """Build the engine, bind the socket, serve until interrupted; `ready` gets the base URL once bound."""
    from rsa.configs import check_model
    from rsa.engines import make_engine

    model = check_model(config.model, config.engine)
    engine = make_engine(config.engine, model, **config.engine_kwargs())
    try:
        service = RSAService(engine, config)
        server, sock, url = bind(service)
        logger.info("serving %s with RSA at %s (N=%d K=%d T=%d, final %s)", service.model_name, url,
                    config.population, config.k, config.steps, config.final)  # fmt: skip
        if ready is not None:
            ready(url)
        server.run(sockets=[sock])
    finally:
        engine.close()
