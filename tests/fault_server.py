"""A local OpenAI-compatible chat-completions server that misbehaves on purpose, for retry tests.

The first requests get the faults listed in `faults`, in arrival order, then every request gets a
valid chat-completion answer. Faults: "429" (with Retry-After: `retry_after`, "0" unless set), "500", "503", "400",
"timeout" (hold the request for `hang_seconds` without answering), "drop" (close the connection
without a response). A valid answer's content is "seed=<seed> port=<port>", so tests can see which
seed reached which server; `usage.completion_tokens` is min(max_tokens, 5) and finish_reason is
"length" when max_tokens <= 5. GET /v1/models reports `max_model_len`.

Per-request behaviour, for scheduling and failure-isolation tests: `content_fn(body)` gives the answer
text, `delay_fn(body)` the seconds to wait before answering, and while `fail_when(body)` is true the
request gets HTTP 500 (a permanent fault for that prompt; set `fail_when = None` to clear it).

    with FaultServer(["429", "timeout"]) as server:
        engine = OpenAIEngine("fake", base_urls=server.url, request_timeout=0.5)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "503", "400", "timeout", "drop")


class FaultServer:
    """Threaded HTTP server on 127.0.0.1 (a free port); see the module docstring."""

    def __init__(
        self,
        faults: Sequence[str] = (),
        *,
        model: str = "fake-model",
        hang_seconds: float = 5.0,
        delay: float = 0.0,
        reasoning: str | None = None,
        content: str | None = None,
        max_model_len: int = 2048,
        content_fn: Any = None,
        delay_fn: Any = None,
        fail_when: Any = None,
        retry_after: str = "0",
    ):
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
        self.faults = list(faults)
        self.model = model
        self.hang_seconds = hang_seconds
        self.delay = delay
        self.reasoning = reasoning
        self.content = content
        self.max_model_len = max_model_len
        self.content_fn = content_fn
        self.delay_fn = delay_fn
        self.fail_when = fail_when
        self.retry_after = retry_after
        #: monotonic arrival time of each chat-completion request, in arrival order
        self.arrivals: list[float] = []
        #: JSON bodies of every chat-completion request received, in arrival order
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []  # each chat request's Authorization header, in arrival order
        #: what each request got: a fault name or "ok"
        self.outcomes: list[str] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name=f"fault-server-{self.port}", daemon=True
        )

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_outcome(self, body: dict[str, Any]) -> str:
        with self._lock:
            index = len(self.requests)
            self.arrivals.append(time.monotonic())
            self.requests.append(body)
            outcome = self.faults[index] if index < len(self.faults) else "ok"
            if outcome == "ok" and self.fail_when is not None and self.fail_when(body):
                outcome = "500"
            self.outcomes.append(outcome)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return outcome

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The valid chat-completion answer to `body`."""
        max_tokens = int(body.get("max_tokens") or 16)
        if self.content_fn is not None:
            content = self.content_fn(body)
        else:
            content = self.content if self.content is not None else f"seed={body.get('seed')} port={self.port}"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        return {
            "id": f"chatcmpl-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "length" if max_tokens <= 5 else "stop"}],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": min(max_tokens, 5),
                "total_tokens": 10 + min(max_tokens, 5),
            },
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence access logs
                pass

            def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    card = {"id": server.model, "object": "model", "max_model_len": server.max_model_len}
                    self._send_json(200, {"object": "list", "data": [card]})
                elif self.path == "/health":
                    self._send_json(200, {})
                else:
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send_json(400, {"error": {"message": "body is not JSON"}})
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                server.authorizations.append(self.headers.get("Authorization"))
                outcome = server._next_outcome(body)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    if server.delay_fn is not None:
                        time.sleep(server.delay_fn(body))
                    if outcome == "ok":
                        self._send_json(200, server.completion(body))
                    elif outcome == "429":
                        self._send_json(
                            429, {"error": {"message": "rate limited"}}, {"Retry-After": server.retry_after}
                        )
                    elif outcome in ("500", "503", "400"):
                        self._send_json(int(outcome), {"error": {"message": f"injected HTTP {outcome}"}})
                    elif outcome == "timeout":
                        server._stopping.wait(server.hang_seconds)
                        self._send_json(200, server.completion(body))
                    elif outcome == "drop":
                        self.close_connection = True
                finally:
                    server._done()

        return Handler
