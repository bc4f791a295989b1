"""Open-loop load against an OpenAI-compatible completions endpoint (vLLM's, or any other).

Arrivals are a seeded Poisson process at `rate` requests/s for `duration` seconds, whether or not earlier
requests have finished (open loop: a slow server queues, as in production). Every request streams, so
TTFT is the arrival of the first chunk that carries a choice; prompts are token ids of exactly `input_len`,
and `min_tokens` + `ignore_eos` (vLLM's extensions) force `output_len` generated tokens, counted from the
server's usage report.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field

from ..engines.base import RequestSample
from ..errors import QwenoptError
from ..results import FINGERPRINT
from ..workload import make_prompts


@dataclass(frozen=True)
class LoadOptions:
    endpoint: str  # base URL ending in /v1
    rate: float  # mean arrivals per second
    duration_s: float
    input_len: int = 128
    output_len: int = 128
    vocab_size: int = 151643
    seed: int = 0
    max_concurrency: int | None = None  # None: unbounded, the open loop as it is
    timeout_s: float = 30.0  # the reference deployment's per-request timeout
    model: str | None = None  # served model name; None asks the endpoint

    def __post_init__(self):
        if self.rate <= 0 or self.duration_s <= 0:
            raise QwenoptError(f"--rate and --duration must be positive, got {self.rate} and {self.duration_s}")
        if self.input_len < 1 or self.output_len < 1:
            raise QwenoptError("--input-len and --output-len must be positive")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise QwenoptError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")


@dataclass
class LoadResult:
    samples: list[RequestSample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    timeouts: int = 0
    sent: int = 0
    elapsed_s: float = 0.0
    model: str = ""


def arrival_times(rate: float, duration_s: float, seed: int) -> list[float]:
    """Seconds from the start at which requests arrive: exponential gaps, the same for the same seed."""
    rng = random.Random(seed)
    times, t = [], rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times


async def discover_model(client, endpoint: str) -> str:
    """The first model the endpoint serves; also proves the endpoint is reachable before any load."""
    import httpx

    try:
        response = await client.get(f"{endpoint}/models", timeout=10)
        response.raise_for_status()
        models = response.json().get("data") or []
    except (httpx.HTTPError, ValueError) as exc:
        raise QwenoptError(f"cannot reach an OpenAI-compatible endpoint at {endpoint}: {exc}".splitlines()[0]) from None
    if not models:
        raise QwenoptError(f"{endpoint}/models lists no model")
    return models[0]["id"]


async def one_request(client, endpoint: str, model: str, prompt: list[int], output_len: int) -> RequestSample:
    """Stream one completion; raises on HTTP errors so the caller can count the failure."""
    payload = {
        "model": model, "prompt": prompt, "max_tokens": output_len, "min_tokens": output_len, "ignore_eos": True,
        "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    chunks = 0
    tokens = None
    async with client.stream("POST", f"{endpoint}/completions", json=payload) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")[:200]
            raise RuntimeError(f"HTTP {response.status_code}: {body}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):  # vLLM reports a failure inside the stream, then still sends [DONE]
                raise RuntimeError(f"error in stream: {json.dumps(chunk['error'])[:200]}")
            if chunk.get("choices"):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("the stream carried no token")
    return RequestSample(e2e_s=end - start, ttft_s=first - start, output_tokens=tokens if tokens is not None else chunks)


async def run_load(options: LoadOptions, on_done=None) -> LoadResult:
    """Send the whole arrival schedule; returns every request's sample, or why it failed."""
    import httpx

    result = LoadResult()
    times = arrival_times(options.rate, options.duration_s, options.seed)
    prompts = make_prompts(len(times), options.input_len, options.vocab_size, options.seed)
    gate = asyncio.Semaphore(options.max_concurrency) if options.max_concurrency else None
    limits = httpx.Limits(max_connections=options.max_concurrency or max(len(times), 1))
    # trust_env=False: a proxy from the environment must not sit between the load and the server it measures
    async with httpx.AsyncClient(timeout=httpx.Timeout(options.timeout_s), limits=limits, trust_env=False) as client:
        result.model = options.model or await discover_model(client, options.endpoint)

        async def fire(prompt: list[int]) -> None:
            try:
                async with gate or contextlib.nullcontext():
                    sample = await one_request(client, options.endpoint, result.model, prompt, options.output_len)
                result.samples.append(sample)
            except httpx.TimeoutException:
                result.timeouts += 1
            except Exception as exc:  # a failed request is data, like a failed cell
                result.failures.append(f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
            if on_done:
                on_done()

        start = time.perf_counter()
        tasks = []
        for at, prompt in zip(times, prompts):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(prompt)))
            result.sent += 1
        await asyncio.gather(*tasks)
        result.elapsed_s = time.perf_counter() - start
    return result


LOAD_COLUMNS = [
    "timestamp", "endpoint", "served_model", "launched_regime", "model", "weights", "quant", "tp", "pp",
    "rate", "duration_s", "input_len", "output_len", "max_concurrency", "timeout_s", "seed",
    "sent", "completed", "failed", "timeouts", "mismatched", "elapsed_s", "startup_s",
    "samples", "latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_mean_s", "ttft_p50_ms", "ttft_p99_ms",
    "tpot_p50_ms", "tpot_p99_ms", "output_tok_s", "total_tok_s", "req_s",
    "gpu_mem_peak_gib", "gpu_util_pct", "power_w", "first_error", *FINGERPRINT,
]


def load_row(options: LoadOptions, result: LoadResult, launched: dict | None, gpu: dict, env: dict) -> dict:
    """One row per load level: what was offered, what came back, and the latency it came back with."""
    from datetime import datetime, timezone

    from ..stats import cell_metrics, count_mismatches

    row = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "endpoint": options.endpoint,
        "served_model": result.model, **(launched or {}), "rate": options.rate, "duration_s": options.duration_s,
        "input_len": options.input_len, "output_len": options.output_len, "max_concurrency": options.max_concurrency,
        "timeout_s": options.timeout_s, "seed": options.seed, "sent": result.sent, "completed": len(result.samples),
        "failed": len(result.failures), "timeouts": result.timeouts,
        "mismatched": count_mismatches([result.samples], options.output_len), "elapsed_s": result.elapsed_s,
        "first_error": result.failures[0] if result.failures else None, **gpu, **env,
    }
    if result.samples:
        row.update(cell_metrics([result.samples], [result.elapsed_s], options.input_len, options.output_len))
    return row
