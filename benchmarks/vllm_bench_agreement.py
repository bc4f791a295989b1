"""Do `qwenopt load` and `vllm bench serve` read the same TTFT and TPOT from a server whose timing is known?

On the GPU (README, "qwenopt load against vllm bench serve") qwenopt read TTFT P50 74 ms and TPOT P50 12.0 ms at
32 req/s where vllm bench read 82-85 and 12.6-13.2 ms. That is either the clients measuring differently or the
server serving the two loads differently. This takes the server out: benchmarks/capacity_server.rs answers every
request on a fixed schedule (first token after --ttft-ms, spread uniformly by --jitter and seeded, then one token
every --gap-ms) and measures what it did: its first-write delay (TTFT truth) and each request's
(last write - first write) / (tokens - 1) (TPOT truth). Both tools, text prompts as in the GPU runs, the same request
count at each rate, take turns (order alternating per repeat); each level's figures are printed beside the truth.

The tools and the server share this machine's cores: the noise of a shared machine shows between repeats, and
the load average is printed per level.

    python3 benchmarks/loadgen_capacity.py --build-server bench-bin/capacity_server   # or let this compile it
    python3 benchmarks/vllm_bench_agreement.py --server-binary bench-bin/capacity_server \\
        --vllm-python /tmp/vvenv/bin/python --out results/cpu/vllm_bench_agreement.txt
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import loadgen_capacity as capacity  # beside this script: the server, its build, one measured level
from loadgen_tools import RUNNERS, missing

TOOLS = ("qwenopt", "vllm-bench")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="8,32", help="offered req/s (Poisson)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of arrivals: rate x this requests")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--jitter", type=float, default=0.3, help="TTFT spread: uniform within +-this fraction")
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--run-timeout", type=float, default=120.0, help="seconds a run may take beyond --duration")
    parser.add_argument("--server-binary", type=Path, help="a prebuilt capacity_server (else compiled with rustc)")
    parser.add_argument("--vllm-python", default="/tmp/vvenv/bin/python", help="a python with vllm")
    parser.add_argument("--out", default="results/cpu/vllm_bench_agreement.txt")
    args = parser.parse_args()
    args.tolerance, args.collapse = 5.0, 25.0  # loadgen_capacity.measure's verdicts (not used here)
    return args


def err(value: float, truth: float) -> float:
    return 100 * (value / truth - 1)


HEADER = (f"{'rate':>4} {'rep':>3} {'tool':<10} {'ok':>4} {'req/s':>6}  {'ttft50':>6} {'true50':>6} {'err%':>6}  "
          f"{'ttft99':>6} {'true99':>6} {'err%':>6}  {'tpot50':>6} {'true':>6} {'err%':>6}  {'itl50':>6}  "
          f"{'lag99':>6} {'cpu':>4} {'load':>5}")


def level_line(rate: float, rep: int, tool: str, r: dict) -> str:
    f = capacity.fmt
    if "error" in r:
        return f"{rate:>4g} {rep:>3} {tool:<10} error: {r['error']}"
    cells = [f"{f(r[key], spec):>6} {f(r[truth], spec):>6} {f(err(r[key], r[truth]), '+.1f'):>6}"
             for key, truth, spec in (("ttft_p50", "truth_p50", ".2f"), ("ttft_p99", "truth_p99", ".2f"),
                                      ("tpot_p50", "truth_tpot50", ".3f"))]
    return (f"{rate:>4g} {rep:>3} {tool:<10} {r['completed']:>4} {f(r['req_s'], '.2f'):>6}  {'  '.join(cells)}  "
            f"{f(r['itl_p50'], '.2f'):>6}  {f(r['lag_p99'], '.2f'):>6} {f(r['cpu_busy'], '.0f'):>3}% "
            f"{r['loadavg']:>5.1f}")


def summary(levels: list[dict], say) -> None:
    """Per rate and tool: the mean error against the truth over the repeats, with its range."""
    say(f"{'rate':>4} {'tool':<10} {'runs':>4}  {'TTFT P50 err% mean (min..max)':>30}  "
        f"{'TTFT P99 err%':>24}  {'TPOT P50 err%':>24}  {'ms over the truth: TTFT P50 / TPOT P50':>39}")
    for rate in sorted({r["rate"] for r in levels}):
        for tool in TOOLS:
            ok = [r for r in levels if r["rate"] == rate and r["tool"] == tool and "error" not in r]
            if not ok:
                continue
            cells = []
            for key, truth in (("ttft_p50", "truth_p50"), ("ttft_p99", "truth_p99"), ("tpot_p50", "truth_tpot50")):
                errors = [err(r[key], r[truth]) for r in ok]
                cells.append(f"{statistics.mean(errors):+.1f} ({min(errors):+.1f}..{max(errors):+.1f})")
            over = (f"{statistics.mean(r['ttft_p50'] - r['truth_p50'] for r in ok):+.2f} / "
                    f"{statistics.mean(r['tpot_p50'] - r['truth_tpot50'] for r in ok):+.3f}")
            say(f"{rate:>4g} {tool:<10} {len(ok):>4}  {cells[0]:>30}  {cells[1]:>24}  {cells[2]:>24}  {over:>39}")


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(capacity.ROOT))
    for tool in TOOLS:
        if reason := missing(tool, args):
            sys.exit(f"error: {tool} cannot run here: {reason}")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="qwenopt-vbench-"))
    args.tokenizer_dir = capacity.write_tokenizer_folder(workdir / "tokenizer")
    binary = args.server_binary or capacity.build_server(workdir / "capacity_server")
    server = capacity.TestServer(binary, 0, args.ttft_ms, args.gap_ms, args.jitter)
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"# qwenopt load against vllm bench serve on a server of known timing, "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    say(f"machine: {capacity.machine()}; 1-minute load average at the start {os.getloadavg()[0]:.1f}")
    tool_versions = capacity.versions(args, list(TOOLS), binary)
    say("tools: " + ", ".join(f"{k} {v}" for k, v in tool_versions.items()))
    say(f"server: TTFT {args.ttft_ms:g} ms +-{100 * args.jitter:g}% (uniform, seeded per arrival), then a token every "
        f"{args.gap_ms:g} ms, {args.output_len} tokens; prompts {args.input_len} tokens of text (vllm bench: its "
        "random dataset through qwenopt's round-trip tokenizer; qwenopt: the openai dialect's words)")
    say(f"levels: Poisson, rate x {args.duration:g} s requests each, {args.repeats} repeats, tool order alternating; "
        "the server and both tools share the machine's cores")
    say("truth: the server's own first-write delay (TTFT) and per-request (last - first write) / (tokens - 1) (TPOT);"
        " a client's TTFT also holds the loopback send and its own parsing, so it reads a little over the truth")
    say("TTFT start: qwenopt from the request's intended arrival (send lag included); vllm bench from the start of "
        "the request's task (after its scheduler's lag)")
    say()
    say(HEADER)
    levels: list[dict] = []
    try:
        for rate in [float(r) for r in args.rates.split(",")]:
            args.num_requests = round(rate * args.duration)
            for rep in range(args.repeats):
                for tool in (TOOLS if rep % 2 == 0 else TOOLS[::-1]):
                    r = capacity.measure(RUNNERS[tool], args, server, rate, workdir,
                                         args.duration + args.run_timeout)
                    r.update(tool=tool, repeat=rep)
                    levels.append(r)
                    say(level_line(rate, rep, tool, r))
    finally:
        server.stop()
    say()
    for tool in TOOLS:  # what the server got: where the loads differ beyond the clients' timing
        sent = next((r["sent_fields"] for r in levels if r["tool"] == tool and r.get("sent_fields")), None)
        say(f"{tool} sent (its last request, prompt left out): {json.dumps(sent, sort_keys=True)}")
    say()
    summary(levels, say)
    say(f"wall: {time.monotonic() - started:.0f} s")
    capacity.append_run(args, lines, tool_versions, levels, workdir)


if __name__ == "__main__":
    main()
