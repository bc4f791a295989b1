"""How fast can each load generator drive a server before its own TTFT stops being true?

Starts one streaming test server of known timing (benchmarks/capacity_server.rs, std-only Rust: one thread
per connection, the first token `--ttft-ms` after the request was read, then one every `--gap-ms`; it
measures its own first-write delay per request, the "truth"), then climbs a ladder of offered rates with
each tool in turn: qwenopt (`python3 -m qwenopt load`, options after `@`, e.g. `qwenopt@--workers=4`),
GuideLLM and AIPerf (each from its own virtualenv) and `vllm-bench` (`vllm bench serve`, from the python
given by --vllm-python); a tool that is not installed is left out and the header says so. It prints side by
side, per tool, the highest rate it sustained with an accurate TTFT (P50 within `--tolerance` of the server's
truth, and at least 90% of the offered rate achieved, less the Poisson count's noise), with P99, achieved
req/s and the tool's own dispatch-delay figure. A lean compiled client (the
server binary's `drive` mode) shows the server's own capacity at rates the tools cannot reach.

Everything runs on loopback and is bounded: `--duration` seconds of arrivals per level, a hard timeout per
run, and `--max-wall-s` for the whole run (a level that would not fit in what is left is skipped and says
so); the wall time is printed. A tool's ladder stops after its first collapsed level (P50 off by more than
`--collapse`, or under 80% of the offered rate achieved). The server and the tools share the machine's
cores: on a small machine that is part of what is measured, and the output says so. Each run is appended to
`--out`, and its levels as one JSON line to the .jsonl beside it.

The server binary: compiled here with rustc unless `--server-binary` names a prebuilt one. For a machine
without rustc, build a statically linked one first (runs on any x86_64 Linux, whatever its glibc) into the
ignored folder bench-bin/:

    python3 benchmarks/loadgen_capacity.py --build-server bench-bin/capacity_server
    # = rustc -O -C target-feature=+crt-static -C strip=symbols -o bench-bin/capacity_server \
    #       benchmarks/capacity_server.rs   (check: `file` says static-pie linked, `ldd` not dynamic)
    python3 benchmarks/loadgen_capacity.py --server-binary bench-bin/capacity_server \
        --tools qwenopt,qwenopt@--workers=2,qwenopt@--workers=4,qwenopt@--workers=8

GuideLLM and AIPerf, where wanted:

    python3 -m venv /tmp/venv-guidellm && /tmp/venv-guidellm/bin/pip install "guidellm>=0.8,<0.9"
    python3 -m venv /tmp/venv-aiperf && /tmp/venv-aiperf/bin/pip install "aiperf>=0.13,<0.14"
    python3 benchmarks/loadgen_capacity.py --out results/cpu/loadgen_capacity.txt
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from loadgen_tools import RUNNERS, TEXT_TOOLS, missing, qwenopt_env, run_lean  # noqa: E402  (beside this script)

ROOT = Path(__file__).resolve().parents[1]
SERVER_SOURCE = ROOT / "benchmarks" / "capacity_server.rs"
LADDER = "25,50,100,200,400,800,1600,2400"
LEVEL_OVERHEAD_S = 5.0  # a level's wall beyond --duration (start-up, drain, report) when deciding whether it fits


def rustc_path() -> str | None:
    found = shutil.which("rustc") or str(Path.home() / ".cargo" / "bin" / "rustc")
    return found if Path(found).exists() else None


def build_server(binary: Path) -> Path:
    """Compile the test server (std only, no crates), so it costs the tools it measures little CPU; statically
    linked (glibc's crt-static), so the binary runs on another x86_64 Linux whatever its glibc."""
    rustc = rustc_path()
    if rustc is None:
        sys.exit("error: no rustc here: build the server elsewhere with --build-server PATH and pass --server-binary")
    binary.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([rustc, "-O", "-C", "target-feature=+crt-static", "-C", "strip=symbols", "-o", str(binary),
                    str(SERVER_SOURCE)], check=True)
    return binary


def machine() -> str:
    """Cores this process may use, of how many, and the CPU model where /proc/cpuinfo names it."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{usable} cores usable of {os.cpu_count()} ({model or platform.processor() or platform.machine()}), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


class TestServer:
    """The compiled server as a child process, with its self-measured first-write delays per level."""

    def __init__(self, binary: Path, port: int, ttft_ms: float, gap_ms: float, jitter: float = 0.0):
        self.binary = binary
        self.process = subprocess.Popen([str(binary), str(port), str(ttft_ms), str(gap_ms), str(jitter)],
                                        stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline().rsplit(":", 1)[1])  # "listening on 127.0.0.1:PORT" once bound
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, path: str, method: str = "GET") -> dict:
        request = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        self._call("/stats/reset", "POST")

    def stats(self) -> dict:
        return self._call("/stats")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class CpuSampler:
    """Share of all cores busy (from /proc/stat) over the seconds in which the server was answering requests,
    so a tool's start-up and report writing do not count: shows who ran out of CPU under load."""

    def __init__(self, server: TestServer):
        self.server, self.busy, self._stop = server, [], threading.Event()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    def _run(self):
        (total, idle), served = self._read(), self.server.stats()["requests"]
        while not self._stop.wait(1.0):
            (total2, idle2), served2 = self._read(), self.server.stats()["requests"]
            if total2 > total and served2 > served:
                self.busy.append(100.0 * (1 - (idle2 - idle) / (total2 - total)))
            total, idle, served = total2, idle2, served2

    @property
    def mean(self) -> float:
        return sum(self.busy) / len(self.busy) if self.busy else float("nan")

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(runner, args, server: TestServer, rate: float, workdir: Path, timeout_s: float, extra: str = "") -> dict:
    """One level: the tool's figures beside the server's own first-write delays and the machine's CPU."""
    server.reset()
    started = time.monotonic()
    with CpuSampler(server) as cpu:
        try:
            result = runner(args, server, rate, workdir, timeout_s, *([extra] if extra else []))
        except Exception as exc:  # a tool that breaks is a result too
            result = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    truth = server.stats()
    result.update(rate=rate, loadavg=os.getloadavg()[0], wall_s=time.monotonic() - started, cpu_busy=cpu.mean,
                  truth_p50=truth["first_write_p50_us"] / 1000, truth_p99=truth["first_write_p99_us"] / 1000,
                  truth_tpot50=truth.get("tpot_p50_us", float("nan")) / 1000, server_requests=truth["requests"],
                  sent_fields={k: v for k, v in (truth.get("last_body") or {}).items() if k != "prompt"})
    if "error" not in result:
        result["err_p50"] = 100 * (result["ttft_p50"] / result["truth_p50"] - 1)
        result["err_p99"] = 100 * (result["ttft_p99"] / result["truth_p99"] - 1)
        # a Poisson level's own count varies: allow three standard deviations of it below 90% of the rate
        noise = 3 * (rate * args.duration) ** 0.5 / args.duration
        result["sustained"] = abs(result["err_p50"]) <= args.tolerance and result["req_s"] >= 0.9 * rate - noise
        result["collapsed"] = abs(result["err_p50"]) > args.collapse or result["req_s"] < 0.8 * rate - noise
    else:
        result.update(sustained=False, collapsed=True)
    return result


def fmt(value, spec=".1f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def level_line(tool: str, r: dict) -> str:
    tool = tool.replace("@--workers=", " w")
    if "error" in r:
        return f"{tool:<9} {r['rate']:>6g}  error: {r['error']}"
    mark = "yes" if r["sustained"] else ("COLLAPSED" if r["collapsed"] else "no")
    status = f" [{r['status']}]" if r.get("status") else ""
    return (f"{tool:<9} {r['rate']:>6g} {fmt(r['req_s']):>8} {r['completed']:>6} {r['failed']:>4} "
            f"{fmt(r['truth_p50'], '.2f'):>7} {fmt(r['ttft_p50'], '.2f'):>8} {fmt(r['err_p50'], '+.1f'):>7} "
            f"{fmt(r['truth_p99'], '.2f'):>7} {fmt(r['ttft_p99'], '.2f'):>8} {fmt(r['lag_p50'], '.2f'):>7} "
            f"{fmt(r['lag_p99'], '.2f'):>8} {fmt(r['cpu_busy'], '.0f'):>4}% {r['wall_s']:>5.0f} {r['loadavg']:>5.1f}  {mark}{status}")


HEADER = (f"{'tool':<9} {'rate':>6} {'req/s':>8} {'ok':>6} {'fail':>4} {'true50':>7} {'ttft50':>8} {'err50%':>7} "
          f"{'true99':>7} {'ttft99':>8} {'lag50':>7} {'lag99':>8} {'cpu':>5} {'wall':>5} {'load':>5}  sustained")


def versions(args, tools: list[str], binary: Path) -> dict:
    """Versions of what runs: the tools asked for, and where the server binary came from."""
    def run(command: list[str], **kw) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, **kw).stdout.strip()
        except OSError:
            return ""

    def pip_version(python: str, package: str) -> str:
        return run([python, "-c", f"import importlib.metadata as m; print(m.version('{package}'))"]) or "?"

    found = {}
    if "qwenopt" in tools:
        sha = run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT) or "no git"
        found["qwenopt"] = run([sys.executable, "-c", "import qwenopt, aiohttp, uvloop; print(qwenopt.__version__, "
                                "f'(git {sha}, aiohttp', aiohttp.__version__ + ', uvloop', uvloop.__version__ + ')')"
                                .replace("{sha}", sha)], env=qwenopt_env()) or "?"
    for tool in ("guidellm", "aiperf"):
        if tool in tools:
            found[tool] = pip_version(str(Path(getattr(args, tool)).with_name("python")), tool)
    if "vllm-bench" in tools:
        found["vllm-bench"] = "vllm " + pip_version(args.vllm_python, "vllm")
    rustc = rustc_path()
    found["server"] = (f"{binary} (prebuilt)" if args.server_binary else
                       f"{binary} built by {run([rustc, '--version']) if rustc else 'rustc'}")
    return found


def write_tokenizer_folder(folder: Path) -> Path:
    """The text tools count tokens with a local tokenizer (they would download one otherwise)."""
    from qwenopt.tokenizer import write_tokenizer

    return write_tokenizer(folder, 8192)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=LADDER, help="offered req/s, climbed per tool")
    parser.add_argument("--lean-rates", default="2400,4000", help="rates for the lean compiled client (empty: none)")
    parser.add_argument("--tools", default="qwenopt,aiperf,guidellm",
                        help="tools in turn; qwenopt@--workers=2 passes options to `qwenopt load`; tools not "
                        "installed are left out")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of arrivals per level")
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--tolerance", type=float, default=5.0, help="TTFT P50 error (%%) still called accurate")
    parser.add_argument("--collapse", type=float, default=25.0, help="TTFT P50 error (%%) that ends a tool's ladder")
    parser.add_argument("--run-timeout", type=float, default=60.0, help="seconds a run may take beyond --duration")
    parser.add_argument("--max-wall-s", type=float, default=600.0, help="bound on the whole run: a level that "
                        f"would not fit in what is left (--duration + {LEVEL_OVERHEAD_S:g} s) is skipped")
    parser.add_argument("--server-binary", type=Path, help="a prebuilt capacity_server (see --build-server) "
                        "instead of compiling one with rustc")
    parser.add_argument("--build-server", type=Path, metavar="PATH", help="only build the statically linked "
                        "server binary at PATH (e.g. bench-bin/capacity_server) and exit")
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--guidellm", default="/tmp/venv-guidellm/bin/guidellm")
    parser.add_argument("--aiperf", default="/tmp/venv-aiperf/bin/aiperf")
    parser.add_argument("--vllm-python", default="/tmp/vvenv/bin/python", help="a python with vllm, for vllm-bench")
    parser.add_argument("--nice", type=int, default=0, help="scheduling priority for the server and every tool "
                        "(negative, as root: ahead of other work on a shared machine)")
    parser.add_argument("--out", default="results/cpu/loadgen_capacity.txt")
    return parser.parse_args()


def ladder(args, server: TestServer, tools: list[str], workdir: Path, deadline: float, say) -> dict[str, list[dict]]:
    """The lean client first (the server's own capacity: short, and what a cut-short run most needs), then each
    tool climbs the rates until it collapses. Levels that do not fit before the deadline are skipped and named."""
    rates = [float(r) for r in args.rates.split(",")]
    plan = [("lean", float(r)) for r in args.lean_rates.split(",") if r]
    plan += [(tool, rate) for tool in tools for rate in rates]
    results: dict[str, list[dict]] = {}
    collapsed: set[str] = set()
    for tool, rate in plan:
        if tool in collapsed:
            continue
        remaining = deadline - time.monotonic()
        if remaining < args.duration + LEVEL_OVERHEAD_S:
            say(f"{tool.replace('@--workers=', ' w'):<9} {rate:>6g}  skipped: {remaining:.0f} s left of --max-wall-s")
            continue
        name, _, extra = tool.partition("@")
        runner = run_lean if tool == "lean" else RUNNERS[name]
        r = measure(runner, args, server, rate, workdir, min(args.duration + args.run_timeout, remaining), extra)
        results.setdefault(tool, []).append(r)
        say(level_line("lean-rs" if tool == "lean" else tool, r))
        if r["collapsed"] and tool != "lean":
            collapsed.add(tool)
    return results


def summary(results: dict[str, list[dict]], say) -> None:
    say(f"{'tool':<9} {'highest sustained req/s':>24} {'TTFT P50 err there':>19} {'P99 ms (truth)':>16} "
        f"{'lag P99 ms':>11}   first miss")
    for tool, levels in results.items():
        held = [r for r in levels if r.get("sustained")]
        best = max(held, key=lambda r: r["rate"]) if held else None
        miss = next((r for r in levels if not r.get("sustained") and (best is None or r["rate"] > best["rate"])), None)
        below = [f"{r['rate']:g}" for r in levels if best and r["rate"] < best["rate"] and not r.get("sustained")]
        miss_text = "none up to the top rate measured" if miss is None else (
            f"{miss['rate']:g} req/s: " + (miss["error"] if "error" in miss else
                                          f"P50 {fmt(miss['err_p50'], '+.1f')}%, {fmt(miss['req_s'])} req/s"))
        name = "lean-rs" if tool == "lean" else tool.replace("@--workers=", " w")
        if best:
            say(f"{name:<9} {best['rate']:>24g} {fmt(best['err_p50'], '+.1f'):>18}% "
                f"{fmt(best['ttft_p99'])} ({fmt(best['truth_p99'])}){'':>3} {fmt(best['lag_p99'], '.2f'):>11}   "
                f"{miss_text}" + (f"; also missed at {', '.join(below)} req/s" if below else ""))
        else:
            say(f"{name:<9} {'none of the ladder':>24} {'':>19} {'':>16} {'':>11}   {miss_text}")


def main() -> None:
    args = parse_args()
    if args.build_server:
        binary = build_server(args.build_server)
        print(subprocess.run(["file", str(binary)], capture_output=True, text=True).stdout.strip() or binary)
        return
    started = time.monotonic()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # children (server, tools, their workers) inherit it
    sys.path.insert(0, str(ROOT))
    asked = args.tools.split(",")
    why_not = {name: missing(name, args) for name in {tool.partition("@")[0] for tool in asked}}
    tools = [tool for tool in asked if why_not[tool.partition("@")[0]] is None]

    workdir = Path(tempfile.mkdtemp(prefix="qwenopt-capacity-"))
    if any(tool in TEXT_TOOLS for tool in tools):
        args.tokenizer_dir = write_tokenizer_folder(workdir / "tokenizer")
    binary = args.server_binary or build_server(workdir / "capacity_server")
    server = TestServer(binary, args.port, args.ttft_ms, args.gap_ms)
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    tool_versions = versions(args, [tool.partition("@")[0] for tool in tools], binary)
    say(f"# Load generator capacity, {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    say(f"machine: {machine()}")
    say("tools: " + ", ".join(f"{k} {v}" for k, v in tool_versions.items()))
    for name, reason in sorted(why_not.items()):
        if reason:
            say(f"left out: {name} ({reason})")
    say(f"server: compiled std-only Rust, one thread per connection, TTFT {args.ttft_ms:g} ms then a token every "
        f"{args.gap_ms:g} ms, {args.output_len} tokens, usage in the last chunk; prompts {args.input_len} tokens")
    say(f"priority: nice {os.getpriority(os.PRIO_PROCESS, 0)} for the server and the tools; 1-minute load average "
        f"at the start {os.getloadavg()[0]:.1f} (anything above the tools' own load is other work on the machine)")
    say(f"levels: Poisson arrivals for {args.duration:g} s per level, loopback only; the server and each tool "
        f"share the machine's cores (the tool's own CPU is part of what is measured); whole run bounded by "
        f"--max-wall-s {args.max_wall_s:g}")
    say("truth = the server's own first-write delay (P50/P99 over the level's requests); sustained = TTFT P50 "
        f"within {args.tolerance:g}% of the truth and >= 90% of the offered rate achieved (less 3 standard deviations "
        "of the level's Poisson count)")
    say("lag = each tool's own dispatch figure: qwenopt send_lag, AIPerf credit_to_start_latency, GuideLLM "
        "request_dispatch_delay (from its per-request timings; 0.8.1 records some targets relative to the run's start, "
        "so only requests with an absolute target count; the JSON beside this file says how many)")
    say("TTFT: qwenopt and the lean client count it from the intended send time (send lag included); AIPerf and "
        "GuideLLM from the actual send, with the dispatch delay apart (add lag to compare like with like); vllm bench "
        "from the start of its request's task, with no lag figure")
    say("columns: rate offered and req/s achieved; ok/fail requests; true50/99 the server's first-write P50/P99 ms; "
        "ttft50/99 the tool's TTFT ms; err50% its P50 error; lag50/99 its dispatch figure ms; cpu the share of all "
        "cores busy while the server was answering (every process on the machine); wall s the run took; load the "
        "1-minute load average after it (other work on the machine shows here)")
    say()
    say(HEADER)
    try:
        results = ladder(args, server, tools, workdir, started + args.max_wall_s, say)
    finally:
        server.stop()
    say()
    summary(results, say)
    say(f"wall: {time.monotonic() - started:.0f} s for the whole run (bound --max-wall-s {args.max_wall_s:g})")
    append_run(args, lines, tool_versions, results, workdir)


def append_run(args, lines: list[str], tool_versions: dict, levels, workdir: Path) -> None:
    """Append the run's table to --out and its levels as one JSON line beside it: runs on a shared machine differ,
    and every one is kept."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    earlier = out.exists() and out.stat().st_size > 0
    with open(out, "a") as handle:
        handle.write(("\n" if earlier else "") + "\n".join(lines) + "\n")
    with open(out.with_suffix(".jsonl"), "a") as handle:
        handle.write(json.dumps({"versions": tool_versions, "settings": {k: str(v) for k, v in vars(args).items()},
                                 "levels": levels}, default=str) + "\n")
    print(f"wrote {args.out} (logs and raw outputs in {workdir})")


if __name__ == "__main__":
    main()
