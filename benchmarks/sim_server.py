"""A SIMULATED OpenAI-compatible chat-completions server (no model) for scheduling benchmarks.

    python benchmarks/sim_server.py --servers 2 --slots 16 --ms-per-token 0.25 --median-tokens 200 --sigma 1.0

Each simulated server listens on its own loopback port and serves at most `--slots` requests at once,
as a batching server with a fixed number of sequence slots does; further requests wait in a FIFO queue.
A request's completion length is drawn from a lognormal distribution (median `--median-tokens`,
shape `--sigma`; reasoning-trace lengths are heavy-tailed like this), capped by its `max_tokens`, from
a generator seeded by the request's `seed`, so a request always gets the same length and text; it
holds its slot for length x `--ms-per-token` milliseconds. The answer text is short and a pure
function of the seed.

GET /stats gives {"busy_s", "slots", "requests"} (busy slot-seconds since the last POST /reset).
Prints one line `PORTS p1,p2,...` when every server listens. Stdlib asyncio only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time


class SimServer:
    """One simulated server: `slots` concurrent requests, lognormal completion lengths from the seed."""

    def __init__(self, slots: int, ms_per_token: float, median_tokens: float, sigma: float) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.num_slots = slots
        self.seconds_per_token = ms_per_token / 1000.0
        self.mu = math.log(median_tokens)
        self.sigma = sigma
        self.busy = 0.0
        self.requests = 0

    def length(self, seed: int, max_tokens: int) -> int:
        """The completion length of the request with `seed` (at least 1, at most max_tokens)."""
        return max(1, min(max_tokens, round(random.Random(seed).lognormvariate(self.mu, self.sigma))))

    async def complete(self, body: dict) -> dict:
        seed = int(body.get("seed") or 0)
        tokens = self.length(seed, int(body.get("max_tokens") or 1 << 30))
        async with self.slots:
            started = time.monotonic()
            await asyncio.sleep(tokens * self.seconds_per_token)
            self.busy += time.monotonic() - started
            self.requests += 1
        text = f"simulated reasoning of {tokens} tokens, so the answer is \\boxed{{{seed % 4}}}"
        return {
            "id": f"sim-{seed}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "sim"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1},
        }

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                method, path, _ = request_line.decode().split(" ", 2)
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    key, _, value = line.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                status, payload = await self.route(method, path, body)
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                    "Connection: keep-alive\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        path = path.rstrip("/")
        if method == "POST" and path == "/v1/chat/completions":
            return 200, await self.complete(json.loads(body))
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": "sim", "object": "model", "max_model_len": 1 << 20}]}
        if method == "GET" and path == "/stats":
            return 200, {"busy_s": self.busy, "slots": self.num_slots, "requests": self.requests}
        if method == "POST" and path == "/reset":
            self.busy, self.requests = 0.0, 0
            return 200, {}
        return 404, {"error": f"no route {method} {path}"}


async def serve(args: argparse.Namespace) -> None:
    servers = []
    for _ in range(args.servers):
        sim = SimServer(args.slots, args.ms_per_token, args.median_tokens, args.sigma)
        servers.append(await asyncio.start_server(sim.handle, "127.0.0.1", 0, backlog=4096))
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print("PORTS " + ",".join(map(str, ports)), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--ms-per-token", type=float, default=0.25)
    parser.add_argument("--median-tokens", type=float, default=200.0)
    parser.add_argument("--sigma", type=float, default=1.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
