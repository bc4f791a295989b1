"""How fast can each load generator drive a server before its own TTFT stops being true?

Starts one streaming test server of known timing (benchmarks/capacity_server.rs, compiled with rustc, std
only: one thread per connection, the first token `--ttft-ms` after the request was read, then one every
`--gap-ms`; it measures its own first-write delay per request, the "truth"), then climbs a ladder of
offered rates with each tool in turn: qwenopt (`python3 -m qwenopt load`), GuideLLM and AIPerf (each from
its own virtualenv), and prints side by side, per tool, the highest rate it sustained with an accurate TTFT
(P50 within `--tolerance` of the server's truth, and at least 90% of the offered rate achieved, less the
Poisson count's noise), with P99, achieved req/s and the tool's own dispatch-delay figure. A lean compiled
client (the server binary's `drive` mode) shows the server's own capacity at rates the tools cannot reach.

Everything runs on loopback and is bounded (`--duration` seconds of arrivals, a hard timeout per run); a
tool's ladder stops after its first collapsed level (P50 off by more than `--collapse`, or under 80% of the
offered rate achieved). The server and the tools share the machine's cores: on a small machine that is part
of what is measured, and the output says so. Runs on a shared machine differ, so each run is appended to
`--out`, and its levels as one JSON line to the .jsonl beside it.

    python3 -m venv /tmp/venv-guidellm && /tmp/venv-guidellm/bin/pip install "guidellm>=0.8,<0.9"
    python3 -m venv /tmp/venv-aiperf && /tmp/venv-aiperf/bin/pip install "aiperf>=0.13,<0.14"
    python3 benchmarks/loadgen_capacity.py --out results/cpu/loadgen_capacity.txt
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_SOURCE = ROOT / "benchmarks" / "capacity_server.rs"
LADDER = "25,50,100,200,400,800,1600,2400"


def build_server(workdir: Path) -> Path:
    """Compile the test server (std only, no crates), so it costs the tools it measures little CPU."""
    rustc = shutil.which("rustc") or str(Path.home() / ".cargo" / "bin" / "rustc")
    binary = workdir / "capacity_server"
    subprocess.run([rustc, "-O", "-o", str(binary), str(SERVER_SOURCE)], check=True, capture_output=True)
    return binary


class TestServer:
    """The compiled server as a child process, with its self-measured first-write delays per level."""

    def __init__(self, binary: Path, port: int, ttft_ms: float, gap_ms: float):
        self.binary, self.port = binary, port
        self.process = subprocess.Popen([str(binary), str(port), str(ttft_ms), str(gap_ms)],
                                        stdout=subprocess.PIPE, text=True)
        self.process.stdout.readline()  # "listening on ..." once bound
        self.url = f"http://127.0.0.1:{port}"

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


def run_bounded(command: list[str], log: Path, timeout_s: float, env: dict | None = None) -> int:
    """Run a tool in its own process group; past the timeout the whole group is killed."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                   start_new_session=True)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return -9


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


# --- the tools: each returns ttft_p50/p99 (ms), req_s, completed, failed, lag_p50/p99 (ms) and the lag's name ---

def run_qwenopt(args, server: TestServer, rate: float, workdir: Path, extra: str = "") -> dict:
    out = workdir / f"qwenopt{extra}_{rate:g}.csv"
    command = [sys.executable, "-m", "qwenopt", "load", "--endpoint", server.url + "/v1", "--rate", str(rate),
               "--duration", str(args.duration), "--input-len", str(args.input_len),
               "--output-len", str(args.output_len), "--out", str(out), *extra.replace("=", " ").split()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = run_bounded(command, workdir / f"qwenopt{extra}_{rate:g}.log", args.duration + args.run_timeout, env)
    if not out.exists():
        return {"error": f"exit {code}, no row"}
    with open(out) as handle:
        row = list(csv.DictReader(handle))[-1]
    number = lambda key: float(row[key]) if row.get(key) not in (None, "") else float("nan")  # noqa: E731
    return {"ttft_p50": number("ttft_p50_ms"), "ttft_p99": number("ttft_p99_ms"), "req_s": number("req_s"),
            "completed": int(number("completed")), "failed": int(number("failed") + number("timeouts")),
            "lag_p50": number("send_lag_p50_ms"), "lag_p99": number("send_lag_p99_ms"), "lag_name": "send_lag",
            "status": row.get("status", ""), "exit": code}


def run_aiperf(args, server: TestServer, rate: float, workdir: Path) -> dict:
    folder = workdir / f"aiperf_{rate:g}"
    command = [args.aiperf, "profile", "--model", "capacity-test", "--url", server.url,
               "--endpoint-type", "completions", "--streaming", "--tokenizer", str(args.tokenizer_dir),
               "--use-legacy-max-tokens", "--request-rate", str(rate), "--arrival-pattern", "poisson",
               "--benchmark-duration", str(args.duration), "--prompt-input-tokens-mean", str(args.input_len),
               "--prompt-input-tokens-stddev", "0", "--output-tokens-mean", str(args.output_len),
               "--output-tokens-stddev", "0", "--random-seed", "0", "--ui", "none", "--no-server-metrics",
               "--no-gpu-telemetry", "--use-server-token-count", "--artifact-dir", str(folder)]
    code = run_bounded(command, workdir / f"aiperf_{rate:g}.log", args.duration + args.run_timeout)
    export = folder / "profile_export_aiperf.json"
    if not export.exists():
        return {"error": f"exit {code}, no export"}
    data = json.loads(export.read_text())
    metric = lambda name, stat: (data.get(name) or {}).get(stat) or float("nan")  # noqa: E731
    completed = int(metric("request_count", "avg"))
    return {"ttft_p50": metric("time_to_first_token", "p50"), "ttft_p99": metric("time_to_first_token", "p99"),
            "req_s": metric("request_throughput", "avg"), "completed": completed,
            "failed": sum(e.get("count", 0) for e in data.get("error_summary") or []),
            "lag_p50": metric("credit_to_start_latency", "p50"), "lag_p99": metric("credit_to_start_latency", "p99"),
            "lag_name": "credit_to_start_latency", "exit": code}


def run_guidellm(args, server: TestServer, rate: float, workdir: Path) -> dict:
    out = workdir / f"guidellm_{rate:g}.json"
    command = [args.guidellm, "run",
               "--backend", f"kind=openai_http,target={server.url},model=capacity-test,request_format=/v1/completions",
               "--profile", f"kind=poisson,rate={rate}", "--constraint", f"kind=max_duration,seconds={args.duration}",
               "--tokenizer", f"kind=hf_auto,model={args.tokenizer_dir}",
               "--data", f"kind=synthetic_text,prompt_tokens={args.input_len},output_tokens={args.output_len}",
               "--output", f"kind=json,path={out}", "--disable-console-interactive"]
    code = run_bounded(command, workdir / f"guidellm_{rate:g}.log", args.duration + args.run_timeout)
    if not out.exists():
        return {"error": f"exit {code}, no json"}
    benchmark = json.loads(out.read_text())["benchmarks"][0]
    ok = benchmark["requests"]["successful"]
    ttft = benchmark["metrics"]["time_to_first_token_ms"]["successful"]
    # request_dispatch_delay = request_start - targeted_start; 0.8.1 records some targets relative to the run's
    # start (the delay then reads as a timestamp): the figure comes from the requests with an absolute target
    timings = [r["info"]["timings"] for r in ok]
    absolute = [(t["request_start"] - t["targeted_start"]) * 1000 for t in timings if t["targeted_start"] > 1e6]
    totals = benchmark["metrics"]["request_totals"]
    return {"ttft_p50": ttft["percentiles"]["p50"], "ttft_p99": ttft["percentiles"]["p99"],
            "req_s": benchmark["metrics"]["requests_per_second"]["successful"]["mean"],
            "completed": totals["successful"], "failed": totals["errored"],
            "lag_p50": percentile(absolute, 50), "lag_p99": percentile(absolute, 99),
            "lag_name": "request_dispatch_delay", "absolute_targets": f"{len(absolute)} of {len(timings)}", "exit": code}


def run_lean(args, server: TestServer, rate: float, workdir: Path) -> dict:
    done = subprocess.run([str(server.binary), "drive", str(server.port), str(rate), str(args.duration),
                           str(args.output_len)], capture_output=True, text=True,
                          timeout=args.duration + args.run_timeout)
    data = json.loads(done.stdout)
    return {"ttft_p50": data["ttft_p50_ms"], "ttft_p99": data["ttft_p99_ms"], "req_s": data["req_s"],
            "completed": data["ok"], "failed": data["sent"] - data["ok"], "lag_p50": data["send_lag_p50_ms"],
            "lag_p99": data["send_lag_p99_ms"], "lag_name": "send lag (TTFT from schedule)", "exit": done.returncode}


RUNNERS = {"qwenopt": run_qwenopt, "guidellm": run_guidellm, "aiperf": run_aiperf}


def measure(runner, args, server: TestServer, rate: float, workdir: Path, extra: str = "") -> dict:
    """One level: the tool's figures beside the server's own first-write delays and the machine's CPU."""
    server.reset()
    started = time.monotonic()
    with CpuSampler(server) as cpu:
        try:
            result = runner(args, server, rate, workdir, *([extra] if extra else []))
        except Exception as exc:  # a tool that breaks is a result too
            result = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    truth = server.stats()
    result.update(rate=rate, loadavg=os.getloadavg()[0], wall_s=time.monotonic() - started, cpu_busy=cpu.mean,
                  truth_p50=truth["first_write_p50_us"] / 1000, truth_p99=truth["first_write_p99_us"] / 1000,
                  server_requests=truth["requests"])
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


def versions(args) -> dict:
    def pip_version(python: str, package: str) -> str:
        done = subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version('{package}'))"],
                              capture_output=True, text=True)
        return done.stdout.strip() or "not installed"

    qwenopt_sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip()
    return {"qwenopt": f"{pip_version(sys.executable, 'qwenopt')} (git {qwenopt_sha}, aiohttp "
                       f"{pip_version(sys.executable, 'aiohttp')}, uvloop {pip_version(sys.executable, 'uvloop')})",
            "guidellm": pip_version(str(Path(args.guidellm).with_name("python")), "guidellm"),
            "aiperf": pip_version(str(Path(args.aiperf).with_name("python")), "aiperf"),
            "rustc": subprocess.run([shutil.which("rustc") or str(Path.home() / ".cargo/bin/rustc"), "--version"],
                                    capture_output=True, text=True).stdout.strip()}


def write_tokenizer_folder(folder: Path) -> Path:
    """The text tools count tokens with a local tokenizer (they would download one otherwise)."""
    from qwenopt.tokenizer import write_tokenizer

    return write_tokenizer(folder, 8192)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=LADDER, help="offered req/s, climbed per tool")
    parser.add_argument("--lean-rates", default="2400,4000", help="rates for the lean compiled client")
    parser.add_argument("--tools", default="qwenopt,aiperf,guidellm",
                        help="tools in turn; qwenopt@--workers=2 passes options to `qwenopt load`")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of arrivals per level")
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--tolerance", type=float, default=5.0, help="TTFT P50 error (%%) still called accurate")
    parser.add_argument("--collapse", type=float, default=25.0, help="TTFT P50 error (%%) that ends a tool's ladder")
    parser.add_argument("--run-timeout", type=float, default=150.0, help="seconds a run may take beyond --duration")
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--guidellm", default="/tmp/venv-guidellm/bin/guidellm")
    parser.add_argument("--aiperf", default="/tmp/venv-aiperf/bin/aiperf")
    parser.add_argument("--nice", type=int, default=0, help="scheduling priority for the server and every tool "
                        "(negative, as root: ahead of other work on a shared machine)")
    parser.add_argument("--out", default="results/cpu/loadgen_capacity.txt")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # children (server, tools, their workers) inherit it
    sys.path.insert(0, str(ROOT))

    workdir = Path(tempfile.mkdtemp(prefix="qwenopt-capacity-"))
    args.tokenizer_dir = write_tokenizer_folder(workdir / "tokenizer")
    server = TestServer(build_server(workdir), args.port, args.ttft_ms, args.gap_ms)
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    tool_versions = versions(args)
    say(f"# Load generator capacity, {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    say(f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}")
    say("tools: " + ", ".join(f"{k} {v}" for k, v in tool_versions.items()))
    say(f"server: compiled std-only Rust, one thread per connection, TTFT {args.ttft_ms:g} ms then a token every "
        f"{args.gap_ms:g} ms, {args.output_len} tokens, usage in the last chunk; prompts {args.input_len} tokens")
    say(f"priority: nice {os.getpriority(os.PRIO_PROCESS, 0)} for the server and the tools; 1-minute load average "
        f"at the start {os.getloadavg()[0]:.1f} (anything above the tools' own load is other work on the machine)")
    say(f"levels: Poisson arrivals for {args.duration:g} s per level, loopback only; the server and each tool "
        f"share the machine's {os.cpu_count()} cores (the tool's own CPU is part of what is measured)")
    say("truth = the server's own first-write delay (P50/P99 over the level's requests); sustained = TTFT P50 "
        f"within {args.tolerance:g}% of the truth and >= 90% of the offered rate achieved (less 3 standard deviations "
        "of the level's Poisson count)")
    say("lag = each tool's own dispatch figure: qwenopt send_lag, AIPerf credit_to_start_latency, GuideLLM "
        "request_dispatch_delay (from its per-request timings; 0.8.1 records some targets relative to the run's start, "
        "so only requests with an absolute target count; the JSON beside this file says how many)")
    say("TTFT: qwenopt and the lean client count it from the intended send time (send lag included); AIPerf and "
        "GuideLLM from the actual send, with the dispatch delay apart (add lag to compare like with like)")
    say("columns: rate offered and req/s achieved; ok/fail requests; true50/99 the server's first-write P50/P99 ms; "
        "ttft50/99 the tool's TTFT ms; err50% its P50 error; lag50/99 its dispatch figure ms; cpu the share of all "
        "cores busy while the server was answering (every process on the machine); wall s the run took; load the "
        "1-minute load average after it (other work on the machine shows here)")
    say()
    say(HEADER)
    results: dict[str, list[dict]] = {}
    try:
        for tool in args.tools.split(","):
            results[tool] = []
            name, _, extra = tool.partition("@")
            for rate in rates:
                r = measure(RUNNERS[name], args, server, rate, workdir, extra)
                results[tool].append(r)
                say(level_line(tool, r))
                if r["collapsed"]:
                    break
        results["lean"] = []
        for rate in [float(r) for r in args.lean_rates.split(",") if r]:
            r = measure(run_lean, args, server, rate, workdir)
            results["lean"].append(r)
            say(level_line("lean-rs", r))
    finally:
        server.stop()

    say()
    say(f"{'tool':<9} {'highest sustained req/s':>24} {'TTFT P50 err there':>19} {'P99 ms (truth)':>16} "
        f"{'lag P99 ms':>11}   first miss")
    for tool, levels in results.items():
        if not levels:
            continue
        held = [r for r in levels if r.get("sustained")]
        best = max(held, key=lambda r: r["rate"]) if held else None
        miss = next((r for r in levels if not r.get("sustained") and (best is None or r["rate"] > best["rate"])), None)
        below = [f"{r['rate']:g}" for r in levels if best and r["rate"] < best["rate"] and not r.get("sustained")]
        miss_text = "none up to the top rate" if miss is None else (
            f"{miss['rate']:g} req/s: " + (miss["error"] if "error" in miss else
                                          f"P50 {fmt(miss['err_p50'], '+.1f')}%, {fmt(miss['req_s'])} req/s"))
        name = "lean-rs" if tool == "lean" else tool.replace("@--workers=", " w")
        if best:
            say(f"{name:<9} {best['rate']:>24g} {fmt(best['err_p50'], '+.1f'):>18}% "
                f"{fmt(best['ttft_p99'])} ({fmt(best['truth_p99'])}){'':>3} {fmt(best['lag_p99'], '.2f'):>11}   "
                f"{miss_text}" + (f"; also missed at {', '.join(below)} req/s" if below else ""))
        else:
            say(f"{name:<9} {'none of the ladder':>24} {'':>19} {'':>16} {'':>11}   {miss_text}")
    out = Path(args.out)  # each run is appended: runs on a shared machine differ, and every one is kept
    out.parent.mkdir(parents=True, exist_ok=True)
    earlier = out.exists() and out.stat().st_size > 0
    with open(out, "a") as handle:
        handle.write(("\n" if earlier else "") + "\n".join(lines) + "\n")
    with open(out.with_suffix(".jsonl"), "a") as handle:
        handle.write(json.dumps({"versions": tool_versions, "settings": {k: str(v) for k, v in vars(args).items()},
                                 "levels": results}, default=str) + "\n")
    print(f"wrote {args.out} (logs and raw outputs in {workdir})")


if __name__ == "__main__":
    main()
