"""What the gateway adds to a request at low load: TTFT and E2E, direct vs through `qwenopt gateway`.

One streaming test server of known timing (tests/stream_server.py, its own process), or a real server
(`--upstream URL`, e.g. vllm serve on the GPU host), and one gateway in front of it (its own process,
default settings). One request at a time, direct and through the gateway
alternately, so drift in the machine hits both the same; TTFT is the client's send to the first streamed
chunk. The issue's bar is a P50 TTFT difference under 2 ms (on the GPU host, against vLLM).

    python benchmarks/gateway_overhead.py --requests 300 > results/cpu/gateway_overhead.txt
    python benchmarks/gateway_overhead.py --upstream http://127.0.0.1:8000/v1 --requests 300
"""
from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qwenopt.serving.gateway_launch import launch_gateway  # noqa: E402
from tests.stream_server import serve_in_process  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one(client: httpx.Client, url: str, tokens: int, model: str) -> tuple[float, float]:
    body = {"model": model, "prompt": [1] * 16, "max_tokens": tokens, "min_tokens": tokens,
            "ignore_eos": True, "stream": True}
    start = time.perf_counter()
    ttft = None
    with client.stream("POST", f"{url}/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if ttft is None and line.startswith("data: "):
                ttft = time.perf_counter() - start
    return ttft, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per path (direct, gateway)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--ttft-ms", type=float, default=10.0, help="the test server's TTFT")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="the test server's gap between tokens")
    parser.add_argument("--upstream", help="a running OpenAI-compatible server instead of the test server")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.upstream:
            upstream = args.upstream.rstrip("/")
            server = upstream
        else:
            upstream, _ = stack.enter_context(serve_in_process(ttft_s=args.ttft_ms / 1e3, gap_s=args.gap_ms / 1e3))
            server = f"test server, TTFT {args.ttft_ms:g} ms, gap {args.gap_ms:g} ms"
        gateway = stack.enter_context(launch_gateway(upstream, free_port()))
        client = stack.enter_context(httpx.Client(timeout=30, trust_env=False))
        model = client.get(f"{upstream}/models").json()["data"][0]["id"]
        for url in (upstream, gateway):  # warm-up: connections, first-request paths
            for _ in range(10):
                one(client, url, args.tokens, model)
        times = {"direct": [], "gateway": []}
        for _ in range(args.requests):
            times["direct"].append(one(client, upstream, args.tokens, model))
            times["gateway"].append(one(client, gateway, args.tokens, model))
    print(f"# {args.requests} sequential requests per path, {args.tokens} tokens, {server}")
    print(f"{'path':8} {'TTFT P50 ms':>12} {'TTFT P90 ms':>12} {'TTFT P99 ms':>12} {'E2E P50 ms':>11}")
    for path, samples in times.items():
        ttfts, e2es = [t for t, _ in samples], [e for _, e in samples]
        print(f"{path:8} {pct(ttfts, .5) * 1e3:12.2f} {pct(ttfts, .9) * 1e3:12.2f} {pct(ttfts, .99) * 1e3:12.2f} "
              f"{pct(e2es, .5) * 1e3:11.2f}")
    added = [g[0] - d[0] for d, g in zip(times["direct"], times["gateway"])]
    print(f"added TTFT, paired: median {statistics.median(added) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
