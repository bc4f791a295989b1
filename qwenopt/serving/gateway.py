"""The gateway: an OpenAI-compatible proxy (ASGI, Starlette on uvicorn) that applies qwenopt/serving/policy.py.

Each completion request is classified by prompt length, checked against the caps, admitted through the
bounded per-class queues, and forwarded; a streamed answer passes through chunk by chunk as it arrives.
The whole request has one deadline (`timeout_s`). A request that ends early for any reason (deadline,
client gone, error) closes its upstream connection, which is how vLLM learns to abort it and free the GPU.

Every request is one ASGI call watched for the client's disconnect, in the queue as much as mid-stream:
a client that leaves frees its queue place or slot at once, not when the upstream would have finished.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import aiohttp

from ..errors import QwenoptError
from .policy import CLASSES, Admission, BadRequest, GatewayConfig, Shed, apply_rules, words

OUTCOMES = ("ok", "rejected", "shed", "timeout", "upstream_error", "disconnected", "error")  # error: a gateway bug
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FORWARDED_HEADERS = ("authorization", "x-request-id")
HEALTH_TIMEOUT_S = 5.0
LONG_BODY_BYTES = 16384  # text prompts longer than this are tokenized in a worker thread
log = logging.getLogger("qwenopt.gateway")


def require_serve() -> None:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise QwenoptError(f"the gateway needs {exc.name}: install it with pip install 'qwenopt[serve]'") from None


def error_body(message: str, kind: str, status: int, param: str | None = None, code: str | None = None) -> bytes:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code or status}}).encode()


ERROR_KINDS = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error",
               502: "upstream_error", 504: "timeout_error"}


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app, so tests can build several)."""

    def __init__(self, admission: Admission, prompt_unit: str, config: GatewayConfig):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r, p = self.registry, "qwenopt_gateway_"
        self.requests = Counter(p + "requests", "Finished requests by priority class and outcome.",
                                ["class", "outcome"], registry=r)
        self.ttft = Histogram(p + "ttft_seconds", "Gateway arrival to the first streamed chunk, ok streamed requests.",
                              ["class"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram(p + "e2e_seconds", "Gateway arrival to the last byte, ok requests.", ["class"],
                             buckets=LATENCY_BUCKETS, registry=r)
        self.shed = Counter(p + "shed", "Requests answered 429 (queue full or pushed out).", ["class"], registry=r)
        self.timeouts = Counter(p + "timeouts", "Requests past the deadline (answered 504 or an in-stream error).",
                                ["class"], registry=r)
        self.upstream_errors = Counter(p + "upstream_errors", "Upstream 5xx answers and failed connections.",
                                       ["reason"], registry=r)
        info = Gauge(p + "info", "Constant 1; the labels say how prompts are counted and how admission is set.",
                     ["prompt_length_unit", "upstream_priority", "max_in_flight"], registry=r)
        info.labels(prompt_unit, str(config.upstream_priority).lower(), str(config.max_in_flight)).set(1)
        for klass in CLASSES:  # every series exists from the start, at 0
            self.ttft.labels(klass), self.e2e.labels(klass), self.shed.labels(klass), self.timeouts.labels(klass)
            for outcome in OUTCOMES:
                self.requests.labels(klass, outcome)
        r.register(LiveCollector(admission))

    def finish(self, klass: str, outcome: str, started: float, ttft: float | None = None) -> None:
        self.requests.labels(klass, outcome).inc()
        if outcome == "ok":
            self.e2e.labels(klass).observe(time.perf_counter() - started)
            if ttft is not None:
                self.ttft.labels(klass).observe(ttft)
        elif outcome == "shed":
            self.shed.labels(klass).inc()
        elif outcome == "timeout":
            self.timeouts.labels(klass).inc()


class LiveCollector:
    """Read at scrape time: queue depth and in-flight per class, and each GPU's utilisation and memory (NVML)."""

    def __init__(self, admission: Admission):
        self.admission = admission

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from ..telemetry import _nvml

        p = "qwenopt_gateway_"
        queue = GaugeMetricFamily(p + "queue_depth", "Requests waiting for a slot, per class.", labels=["class"])
        flight = GaugeMetricFamily(p + "in_flight", "Requests upstream now, per class.", labels=["class"])
        for klass in CLASSES:
            queue.add_metric([klass], len(self.admission.queues[klass]))
            flight.add_metric([klass], self.admission.in_flight[klass])
        util = GaugeMetricFamily(p + "gpu_utilization_percent", "NVML GPU utilisation, per GPU.", labels=["gpu"])
        used = GaugeMetricFamily(p + "gpu_memory_used_bytes", "NVML device memory used, per GPU.", labels=["gpu"])
        total = GaugeMetricFamily(p + "gpu_memory_total_bytes", "NVML device memory, per GPU.", labels=["gpu"])
        nvml = _nvml()
        if nvml is not None:  # no GPU: the families are declared, with no samples
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([str(index)], nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                used.add_metric([str(index)], memory.used)
                total.add_metric([str(index)], memory.total)
        yield from (queue, flight, util, used, total)


def tokenizer_counter(folder: str):
    """A text counter from a tokenizer folder (transformers' AutoTokenizer): tokens without special tokens."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a folder it cannot use
        raise QwenoptError(f"cannot load a tokenizer from {folder}: {exc}") from None
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def has_tokenizer(folder: str | None) -> bool:
    return bool(folder) and any((Path(folder) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


class Gateway:
    """The proxy's state: config, admission, metrics, the upstream client and the models the upstream lists."""

    def __init__(self, config: GatewayConfig, count_text=None, prompt_unit: str | None = None):
        self.config = config
        self.root = config.upstream.removesuffix("/v1")
        self.admission = Admission(config)
        self.models: set[str] | None = None
        self.model_root: str | None = None
        if count_text is None and config.tokenizer:
            count_text, prompt_unit = tokenizer_counter(config.tokenizer), "tokens"
        self.count_text = count_text
        self.prompt_unit = prompt_unit or ("tokens" if count_text else "words")
        self.metrics: Metrics | None = None
        self.client: aiohttp.ClientSession | None = None  # made in start(), on the server's event loop

    async def start(self) -> None:
        """At startup: the upstream's models, and its tokenizer if its model folder is local and has one."""
        # aiohttp, not httpx: httpx fell behind at 150 req/s on the 2-core VM (results/cpu/gateway_load.txt)
        self.client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                            timeout=aiohttp.ClientTimeout(total=None))
        await self.refresh_models()
        if self.count_text is None and has_tokenizer(self.model_root):
            try:
                self.count_text, self.prompt_unit = tokenizer_counter(self.model_root), "tokens"
            except QwenoptError as exc:
                log.warning("%s; counting text prompts in words", exc)
        if self.count_text is None:
            self.count_text, self.prompt_unit = words, "words"
        self.metrics = Metrics(self.admission, self.prompt_unit, self.config)

    async def refresh_models(self) -> None:
        try:
            status, content = await self.get(f"{self.config.upstream}/models")
            data = json.loads(content)["data"]
            self.models = {entry["id"] for entry in data}
            root = data[0].get("root") if data else None
            self.model_root = root if isinstance(root, str) and os.path.isdir(root) else None
        except Exception:
            self.models = None  # not up yet, or lists no models: checked again on the next unknown name

    async def get(self, url: str) -> tuple[int, bytes]:
        async with self.client.get(url, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as answer:
            return answer.status, await answer.read()

    async def known_model(self, name) -> bool:
        if not self.config.check_model or name is None:
            return True
        if self.models is None or name not in self.models:
            await self.refresh_models()
        return self.models is None or name in self.models


async def send_json(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class CompletionsEndpoint:
    """POST /v1/completions or /v1/chat/completions, as a raw ASGI app so the client's disconnect is seen."""

    def __init__(self, gateway: Gateway, path: str, chat: bool):
        self.gateway, self.path, self.chat = gateway, path, chat

    async def __call__(self, scope, receive, send) -> None:
        from starlette.requests import ClientDisconnect, Request

        request = Request(scope, receive)
        started = time.perf_counter()
        state = {"klass": "none", "outcome": None, "ttft": None, "started": False}
        try:
            raw = await request.body()
        except ClientDisconnect:
            return self.gateway.metrics.finish("none", "disconnected", started)
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}

        async def tracked(message) -> None:
            state["started"] = True
            await send(message)

        work = asyncio.ensure_future(self.handle(raw, headers, tracked, state, started))
        watch = asyncio.ensure_future(wait_disconnect(receive))
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()  # a client may close as soon as it has [DONE], before the upstream's stream has ended
            state["outcome"] = state["outcome"] or ("ok" if state.get("complete") else "disconnected")
        watch.cancel()
        await asyncio.gather(work, watch, return_exceptions=True)
        if not work.cancelled() and work.exception() is not None:  # a gateway bug: answer 500, keep serving
            log.error("gateway error", exc_info=work.exception())
            state["outcome"] = "error"
            if not state["started"]:
                await send_json(send, 500, error_body(f"gateway error: {work.exception()!r}", "server_error", 500))
        self.gateway.metrics.finish(state["klass"], state["outcome"] or "disconnected", started, state["ttft"])

    async def handle(self, raw: bytes, headers: dict, send, state: dict, started: float) -> None:
        gateway, config = self.gateway, self.gateway.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.timeout_s

        async def fail(status: int, message: str, outcome: str, param=None, code=None, extra=None) -> None:
            state["outcome"] = outcome
            await send_json(send, status, error_body(message, ERROR_KINDS[status], status, param, code), extra)

        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return await fail(400, f"the request body is not valid JSON: {exc}", "rejected")
        try:
            if gateway.prompt_unit == "tokens" and len(raw) > LONG_BODY_BYTES:  # keep the loop free meanwhile
                admitted = await asyncio.to_thread(apply_rules, body, self.chat, config, gateway.count_text)
            else:
                admitted = apply_rules(body, self.chat, config, gateway.count_text)
        except BadRequest as exc:
            state["klass"] = exc.klass
            return await fail(exc.status, str(exc), "rejected", exc.param, exc.code)
        state["klass"] = klass = admitted.klass
        if not await gateway.known_model(admitted.body.get("model")):
            listed = ", ".join(sorted(gateway.models or ()))
            return await fail(404, f"the model {admitted.body['model']!r} does not exist; this upstream serves: "
                                   f"{listed}", "rejected", "model", "model_not_found")
        try:
            ticket = gateway.admission.enter(klass)
        except Shed as exc:
            return await self.shed(fail, exc)
        response = None
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await ticket.wait()
                    response = await gateway.client.post(f"{config.upstream}{self.path}", json=admitted.body,
                                                         headers=headers)
                    if response.status != 200 or not admitted.body.get("stream"):
                        content = await response.read()
            except Shed as exc:
                return await self.shed(fail, exc)
            except TimeoutError:
                return await fail(504, f"the request did not finish within the gateway's {config.timeout_s:g} s "
                                       "timeout", "timeout", code="timeout")
            except (aiohttp.ClientError, OSError) as exc:  # the upstream is down or broke the connection
                gateway.metrics.upstream_errors.labels(type(exc).__name__).inc()
                return await fail(502, f"the upstream at {config.upstream} failed: {exc!r}", "upstream_error")
            meta = [(b"x-qwenopt-class", klass.encode()), (b"x-qwenopt-prompt-length", str(admitted.prompt_len).encode())]
            if response.status != 200 or not admitted.body.get("stream"):
                if response.status >= 500:
                    gateway.metrics.upstream_errors.labels(str(response.status)).inc()
                state["outcome"] = ("ok" if response.status == 200 else
                                    "upstream_error" if response.status >= 500 else "rejected")
                kind = response.headers.get("content-type", "application/json").encode()
                await send({"type": "http.response.start", "status": response.status,
                            "headers": [(b"content-type", kind), *meta]})
                await send({"type": "http.response.body", "body": content})
                return
            await self.stream(response, send, state, started, deadline, meta)
        finally:
            if response is not None and response.content.at_eof():
                response.release()  # read to the end: the connection goes back to the pool
            elif response is not None:
                response.close()  # cut short: the connection is dropped, which is how vLLM aborts the request
            ticket.release()

    async def stream(self, response, send, state: dict, started: float, deadline: float, meta: list) -> None:
        """Pass the upstream's chunks on as they come; past the deadline, end the stream with an error event."""
        kind = response.headers.get("content-type", "text/event-stream").encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind), *meta]})
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in response.content.iter_any():
                    if state["ttft"] is None:
                        state["ttft"] = time.perf_counter() - started
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    state["complete"] = chunk.rstrip().endswith(b"data: [DONE]")
            state["outcome"] = "ok"
        except TimeoutError:
            state["outcome"] = "timeout"
            timeout = self.gateway.config.timeout_s
            error = error_body(f"the request did not finish within the gateway's {timeout:g} s timeout",
                               "timeout_error", 504, code="timeout")
            await send({"type": "http.response.body", "body": b"data: " + error + b"\n\ndata: [DONE]\n\n",
                        "more_body": True})
        except (aiohttp.ClientError, OSError) as exc:  # the upstream broke off mid-stream
            state["outcome"] = "upstream_error"
            self.gateway.metrics.upstream_errors.labels(type(exc).__name__).inc()
            error = error_body(f"the upstream broke off the stream: {exc!r}", "upstream_error", 502)
            await send({"type": "http.response.body", "body": b"data: " + error + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def shed(self, fail, exc: Shed) -> None:
        retry = str(self.gateway.config.retry_after_s).encode()
        await fail(429, f"the gateway is full, try again later: {exc}", "shed", code="queue_full",
                   extra=[(b"retry-after", retry)])


def build_app(config: GatewayConfig, count_text=None, prompt_unit: str | None = None):
    """The ASGI app: the two completion routes, /v1/models passed through, /health and /metrics."""
    require_serve()
    from contextlib import asynccontextmanager

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    gateway = Gateway(config, count_text, prompt_unit)

    async def models(request):
        try:
            status, content = await gateway.get(f"{config.upstream}/models")
        except (aiohttp.ClientError, OSError) as exc:
            return Response(error_body(f"the upstream is unreachable: {exc!r}", "upstream_error", 502), 502,
                            media_type="application/json")
        return Response(content, status, media_type="application/json")

    async def health(request):
        try:
            status, _ = await gateway.get(f"{gateway.root}/health")
            healthy, detail = status == 200, f"HTTP {status}"
        except Exception as exc:
            healthy, detail = False, repr(exc)
        return JSONResponse({"status": "ok" if healthy else "unhealthy", "upstream": config.upstream,
                             "upstream_health": detail}, 200 if healthy else 503)

    async def metrics(request):
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app):
        await gateway.start()
        yield
        await gateway.client.close()

    routes = [Route("/v1/completions", CompletionsEndpoint(gateway, "/completions", chat=False), methods=["POST"]),
              Route("/v1/chat/completions", CompletionsEndpoint(gateway, "/chat/completions", chat=True),
                    methods=["POST"]),
              Route("/v1/models", models), Route("/health", health), Route("/metrics", metrics)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app


def serve(app, config: GatewayConfig) -> None:
    """Run the gateway app (build_app) with uvicorn until Ctrl-C."""
    import uvicorn

    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
