"""Which HTTP client should the load generator use? Measure it: streams/s, chunks/s and send lag per client.

One streaming test server (tests/stream_server.py, its own process on uvloop) answers every request with
`--tokens` SSE chunks after a TTFT of `--ttft-ms` and gaps of `--gap-ms`. Each client (httpx, aiohttp,
each on asyncio's default loop and on uvloop) runs alone in a fresh process and sends an open-loop constant
schedule at each offered rate for `--seconds`; TTFT is measured from the intended send time, so a client that
falls behind shows it in the send lag and in the TTFT error against the server's known TTFT.

    python benchmarks/http_clients.py > results/cpu/http_clients.txt
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ["httpx", "httpx+uvloop", "aiohttp", "aiohttp+uvloop"]


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def drive(kind: str, url: str, rate: float, seconds: float, tokens: int) -> dict:
    payload = {"model": "fake-qwen", "prompt": [1] * 16, "max_tokens": tokens, "stream": True}
    lags, ttfts, chunks, done, errors = [], [], [0], [0], [0]
    if kind.startswith("httpx"):
        import httpx
        session = httpx.AsyncClient(timeout=30, trust_env=False, limits=httpx.Limits(max_connections=None))

        async def stream(body):
            async with session.stream("POST", f"{url}/completions", json=body) as response:
                async for line in response.aiter_lines():
                    yield line
    else:
        import aiohttp
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False)

        async def stream(body):
            async with session.post(f"{url}/completions", json=body) as response:
                async for line in response.content:
                    yield line.decode()

    async def one(intended: float) -> None:
        lags.append(time.perf_counter() - intended)
        first = None
        try:
            async for line in stream(payload):
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    if json.loads(data).get("choices"):
                        chunks[0] += 1
                        if first is None:
                            first = time.perf_counter()
                            ttfts.append(first - intended)
            done[0] += 1
        except Exception:
            errors[0] += 1

    tasks = []
    start = time.perf_counter() + 0.2
    n = int(rate * seconds)
    for i in range(n):
        intended = start + i / rate
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(intended)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    await (session.aclose() if kind.startswith("httpx") else session.close())
    return {"client": kind, "rate": rate, "sent": n, "done": done[0], "errors": errors[0],
            "streams_s": done[0] / elapsed, "chunks_s": chunks[0] / elapsed,
            "lag_p50_ms": 1e3 * pct(lags, 0.5), "lag_p99_ms": 1e3 * pct(lags, 0.99),
            "ttft_p50_ms": 1e3 * pct(ttfts, 0.5), "ttft_p99_ms": 1e3 * pct(ttfts, 0.99)}


def child(args) -> None:
    if args.client.endswith("uvloop"):
        import uvloop
        uvloop.install()
    print(json.dumps(asyncio.run(drive(args.client, args.url, args.rate, args.seconds, args.tokens))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="250,500,1000,2000")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds one client may take for one rate")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return child(args)
    server = subprocess.Popen([sys.executable, str(ROOT / "tests/stream_server.py"), "--lifetime", "900",
                               "--ttft-s", str(args.ttft_ms / 1e3), "--gap-s", str(args.gap_ms / 1e3)],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{server.stdout.readline().split()[1]}/v1"
        import os
        import platform

        print(f"# {platform.python_version()}, {os.cpu_count()} CPUs, load average before: "
              f"{os.getloadavg()[0]:.1f}; server and client share the machine")
        print(f"# server: TTFT {args.ttft_ms} ms, {args.tokens} chunks {args.gap_ms} ms apart; "
              f"{args.seconds} s per rate; constant arrivals; TTFT from the intended send time")
        print(f"{'client':16} {'offered':>8} {'done':>6} {'err':>4} {'streams/s':>9} {'chunks/s':>9} "
              f"{'lag P50':>8} {'lag P99':>8} {'TTFT P50':>9} {'TTFT P99':>9}  (ms)")
        for rate in map(float, args.rates.split(",")):
            for client in args.clients.split(","):
                try:
                    out = subprocess.run([sys.executable, __file__, "--client", client, "--url", url, "--rate",
                                          str(rate), "--seconds", str(args.seconds), "--tokens", str(args.tokens)],
                                         capture_output=True, text=True, timeout=args.limit)
                except subprocess.TimeoutExpired:
                    print(f"{client:16} {rate:8.0f} did not finish its {rate * args.seconds:.0f} streams in "
                          f"{args.limit:g} s", flush=True)
                    continue
                if out.returncode:
                    print(f"{client:16} {rate:8.0f} failed: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(out.stdout)
                print(f"{client:16} {rate:8.0f} {r['done']:6d} {r['errors']:4d} {r['streams_s']:9.1f} "
                      f"{r['chunks_s']:9.0f} {r['lag_p50_ms']:8.2f} {r['lag_p99_ms']:8.2f} "
                      f"{r['ttft_p50_ms']:9.2f} {r['ttft_p99_ms']:9.2f}", flush=True)
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
