"""A deterministic streaming completions server of known timing, for tests and benchmarks.

Each request waits `ttft_s` (times a seeded jitter) before its first token, then `gap_s` (jittered) between
tokens; the jitter of request n is drawn from Random(f"{seed}-{n}"). The server keeps what it actually did
(request parsed -> first token written, and every gap between writes), so a test can compare what the client
measured with what the server did (GET /stats). Raw asyncio, HTTP/1.1 with
keep-alive and chunked SSE, so one process streams fast enough not to be the limit of the client it tests.

Faults for tests: `short_by` (usage says fewer tokens), `truncate_after` (the stream stops early, cleanly),
`error_in_stream`, `fail_every` (HTTP 500), `die_after` (the server drops every connection, and every new one
from the n-th request on). `dialect` "vllm" ends with `data: [DONE]`; "transformers" (serve 5.x) sends
the usage in a last chunk with an empty choice and no [DONE], and answers 422 to fields it does not know.

Run in a thread (`serve_in_thread`) or as a process: `python tests/stream_server.py --port 0 ...` prints
`port N` on its first line and stops after `--lifetime` seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

MODEL = "fake-qwen"
TRANSFORMERS_FIELDS = {"model", "prompt", "max_tokens", "stream", "seed", "temperature", "top_p", "stop",
                       "frequency_penalty", "generation_config"}


@dataclass
class Config:
    ttft_s: float = 0.01
    gap_s: float = 0.002
    jitter: float = 0.0  # each sleep is scaled by a seeded uniform factor in [1 - jitter, 1 + jitter]
    seed: int = 0
    dialect: str = "vllm"
    short_by: int = 0
    truncate_after: int | None = None
    error_in_stream: bool = False
    fail_every: int = 0
    die_after: int | None = None
    garbage_chunk: bool = False  # a non-JSON data line instead of the first token
    models_body: str | None = None  # a raw /v1/models answer, for malformed-server tests
    # a stream may end only while this many are in flight (then it leaves at once, so the next may not end before
    # a new request came): a closed loop of that many users then meets exactly hold_until - 1 others at every
    # arrival, whatever the machine's speed. A stream that waited hold_timeout_s ends anyway (the level's last ones)
    hold_until: int = 0
    hold_timeout_s: float = 0.5


@dataclass
class Stats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    others_at_arrival: list = field(default_factory=list)  # streams already in flight when each request came
    ttfts: list = field(default_factory=list)
    gaps: list = field(default_factory=list)
    prompts: list = field(default_factory=list)  # every accepted request's prompt (a tuple of ids, or the text)


def _sse(obj) -> bytes:
    data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class StreamServer:
    def __init__(self, config: Config):
        self.config = config
        self.stats = Stats()
        self.server: asyncio.AbstractServer | None = None
        self.writers: set = set()
        self.dead = False
        self.arrivals = asyncio.Condition()  # notified at every request: hold_until's waits (bound to a loop on use)

    async def start(self, host="127.0.0.1", port=0) -> int:
        self.server = await asyncio.start_server(self.connection, host, port, backlog=4096)
        return self.server.sockets[0].getsockname()[1]

    def die(self) -> None:
        """Drop every connection, and from now on each new one as soon as it is accepted. The socket keeps listening:
        closing it while connections wait in asyncio's accept queue left some neither served nor closed (Python 3.11,
        asyncio.Server._attach on a closed server), and their clients waited out their timeout instead of failing."""
        self.dead = True
        for writer in list(self.writers):
            writer.transport.abort()

    def close(self) -> None:
        self.die()
        self.server.close()

    async def connection(self, reader, writer):
        if self.dead:
            writer.transport.abort()
            return
        self.writers.add(writer)
        try:
            while not self.dead:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if method == "GET":
                    await self.get(path, writer)
                elif not await self.complete(json.loads(body), writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def reply(self, writer, code: int, body: bytes) -> None:
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (code, len(body), body))
        await writer.drain()

    async def get(self, path: str, writer) -> None:
        if path == "/v1/models":
            body = self.config.models_body or json.dumps({"object": "list", "data": [
                {"id": MODEL, "object": "model", "owned_by": "vllm" if self.config.dialect == "vllm" else "me"}]})
            await self.reply(writer, 200, body.encode())
        elif path == "/stats":
            await self.reply(writer, 200, json.dumps(self.stats.__dict__).encode())
        elif path == "/metrics" and self.config.dialect == "vllm":  # vLLM's prefix-cache counters, in tokens,
            queries = hits = 0  # of a cache that keeps whole prompts
            seen = set()
            for prompt in self.stats.prompts:
                queries += len(prompt)
                hits += len(prompt) if prompt in seen else 0
                seen.add(prompt)
            text = "".join(f"# TYPE vllm:prefix_cache_{name}_total counter\n"  # as prometheus-client writes it
                           f'vllm:prefix_cache_{name}_total{{engine="0",model_name="{MODEL}"}} {value:.1f}\n'
                           for name, value in (("queries", queries), ("hits", hits)))
            await self.reply(writer, 200, text.encode())
        elif path == "/health":  # as vllm serve answers once ready, so the launcher can start this in its place
            await self.reply(writer, 200, b"{}")
        else:
            await self.reply(writer, 404, b"{}")

    def rejects(self, request: dict) -> str | None:
        if self.config.dialect == "transformers":
            unexpected = set(request) - TRANSFORMERS_FIELDS
            if unexpected:
                return f"Unexpected fields in the request: {sorted(unexpected)}"
            if not isinstance(request.get("prompt"), str):
                return "prompt must be a string."
        elif not isinstance(request.get("prompt"), list):
            return "this server takes token-id prompts"
        if request.get("model") != MODEL:
            return f"unknown model {request.get('model')!r}"
        return None

    async def complete(self, request: dict, writer) -> bool:
        """Stream one completion; False when the connection must close."""
        arrived = time.perf_counter()
        c, stats = self.config, self.stats
        stats.requests += 1
        n = stats.requests
        if c.die_after is not None and n >= c.die_after:
            self.die()
            return False
        problem = self.rejects(request)
        if problem:
            await self.reply(writer, 422, json.dumps({"detail": problem}).encode())
            return True
        if c.fail_every and n % c.fail_every == 0:
            await self.reply(writer, 500, b'{"error": "boom"}')
            return True
        prompt = request["prompt"]
        stats.prompts.append(tuple(prompt) if isinstance(prompt, list) else prompt)
        rng = random.Random(f"{c.seed}-{n}")
        jit = lambda: 1 + c.jitter * (2 * rng.random() - 1)  # noqa: E731
        stats.others_at_arrival.append(stats.in_flight)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        if c.hold_until:
            async with self.arrivals:
                self.arrivals.notify_all()
        streaming = True
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            if c.error_in_stream:
                writer.write(_sse({"error": {"message": "engine died", "code": 500}}) + _sse(b"[DONE]") + b"0\r\n\r\n")
                await writer.drain()
                return True
            if c.garbage_chunk:
                writer.write(_sse(b"<html>oops</html>") + _sse(b"[DONE]") + b"0\r\n\r\n")
                await writer.drain()
                return True
            asked = request["max_tokens"]
            tokens = asked - c.short_by
            sent = tokens if c.truncate_after is None else min(tokens, c.truncate_after)
            last_write = arrived
            for i in range(sent):
                await asyncio.sleep((c.ttft_s if i == 0 else c.gap_s) * jit())
                now = time.perf_counter()  # the truth is what happened: asyncio's sleeps run a little long
                (stats.ttfts if i == 0 else stats.gaps).append(now - last_write)
                last_write = now
                last = i == tokens - 1
                reason = ("length" if last else None) if c.dialect == "vllm" else None
                if i == sent - 1:  # out of flight before the last bytes: a closed-loop user's next request
                    if c.hold_until:  # must not find its own previous stream still counted
                        await self.hold()
                    stats.in_flight -= 1  # no await between the check in hold() and this: no other stream ends
                    streaming = False
                writer.write(_sse({"choices": [{"index": 0, "text": "x", "finish_reason": reason}]}))
                await writer.drain()
            if sent == tokens:
                usage = {"prompt_tokens": len(request["prompt"]), "completion_tokens": tokens}
                if c.dialect == "vllm":
                    writer.write(_sse({"choices": [], "usage": usage}) + _sse(b"[DONE]"))
                else:
                    writer.write(_sse({"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                                       "usage": usage}))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        finally:
            if streaming:
                stats.in_flight -= 1

    async def hold(self) -> None:
        """Wait until hold_until streams are in flight (or hold_timeout_s passed)."""
        deadline = time.perf_counter() + self.config.hold_timeout_s
        async with self.arrivals:
            while self.stats.in_flight < self.config.hold_until and time.perf_counter() < deadline:
                try:
                    await asyncio.wait_for(self.arrivals.wait(), deadline - time.perf_counter())
                except asyncio.TimeoutError:
                    break


@contextmanager
def serve_in_thread(**config):
    """Yield the /v1 base URL of a server running in a daemon thread; stops it on exit."""
    loop = asyncio.new_event_loop()
    server = StreamServer(Config(**config))
    port = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", server
    finally:
        def close():
            server.close()
            loop.stop()
        loop.call_soon_threadsafe(close)
        thread.join(5)


@contextmanager
def serve_in_process(lifetime: float = 120.0, **config):
    """Yield (base URL, stats()) of a server in its own process, so it never shares a core's GIL with the client."""
    import subprocess
    import urllib.request

    argv = [sys.executable, __file__, "--lifetime", str(lifetime)]
    for name, value in config.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [] if value is False else [flag, str(value)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline().split()[1])
        root = f"http://127.0.0.1:{port}"

        def stats() -> dict:
            no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with no_proxy.open(f"{root}/stats", timeout=10) as answer:
                return json.loads(answer.read())

        yield f"{root}/v1", stats
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=300.0, help="seconds until the server stops by itself")
    for name, default in Config().__dict__.items():
        if name in ("truncate_after", "die_after"):
            parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
        elif name == "models_body":
            continue
        elif isinstance(default, bool):
            parser.add_argument("--" + name.replace("_", "-"), action="store_true")
        else:
            parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = vars(parser.parse_args())
    port, lifetime = args.pop("port"), args.pop("lifetime")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def run():
        server = StreamServer(Config(**args))
        print(f"port {await server.start(port=port)}", flush=True)
        await asyncio.sleep(lifetime)

    asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
