"""A fake OpenAI-compatible upstream for the gateway tests, and the asyncio helpers that run it.

The upstream answers each completion with its first chunk at once, then holds the rest until the test
opens `gate`; it records every arrival (the body the gateway sent), every finish and every request whose
client (the gateway) went away before the end.
"""
import asyncio
import json
from contextlib import asynccontextmanager

import uvicorn

WAIT_S = 10.0  # how long a condition may take to become true before the test fails (never reached when correct)


class Upstream:
    """An OpenAI-compatible completions server: records arrivals, finishes and cancellations."""

    def __init__(self, tokens: int = 3):
        self.tokens = tokens
        self.gate = asyncio.Event()
        self.arrivals: list[dict] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.healthy = True
        self.root = "/no/such"  # the model folder /v1/models names (vLLM: the path it loaded)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] == "GET":
            if scope["path"] == "/health":
                return await self.reply(send, 200 if self.healthy else 503, {})
            return await self.reply(send, 200, {"object": "list", "data": [{"id": "fake-qwen", "root": self.root}]})
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw)
        self.arrivals.append(body)
        answer = asyncio.ensure_future(self.answer(body, send))
        gone = asyncio.ensure_future(self.disconnect(receive))
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self.cancelled.append(body.get("user"))
        gone.cancel()
        await asyncio.gather(answer, gone, return_exceptions=True)

    @staticmethod
    async def disconnect(receive):
        while (await receive())["type"] != "http.disconnect":
            pass

    @staticmethod
    async def reply(send, status, payload):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})

    async def answer(self, body, send):
        if not body.get("stream"):
            await self.gate.wait()
            self.finished.append(body.get("user"))
            return await self.reply(send, 200, {"choices": [{"index": 0, "text": "x" * self.tokens}],
                                                "usage": {"completion_tokens": self.tokens}})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for index in range(self.tokens):
            chunk = json.dumps({"choices": [{"index": 0, "text": "x"}]})
            await send({"type": "http.response.body", "body": f"data: {chunk}\n\n".encode(), "more_body": True})
            if index == 0:
                await self.gate.wait()
        usage = json.dumps({"choices": [], "usage": {"completion_tokens": self.tokens}})
        self.finished.append(body.get("user"))
        await send({"type": "http.response.body", "body": f"data: {usage}\n\ndata: [DONE]\n\n".encode()})


@asynccontextmanager
async def serving(app):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.ensure_future(server.serve())
    await until(lambda: server.started or task.done())
    if task.done():
        task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def until(condition, what="condition"):
    """Wait, yielding to the loop, until `condition()` holds (a bound only against a hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
