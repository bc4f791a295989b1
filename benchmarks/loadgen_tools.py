"""The load generators benchmarks/loadgen_capacity.py drives, one runner each, and how to tell they are installed.

Every runner takes (args, server, rate, workdir, timeout_s[, extra]) and returns the tool's own figures:
ttft_p50/p99 (ms), req_s, completed, failed, lag_p50/p99 (ms) and the lag's name, or {"error": ...}.
Each tool runs as a child process in its own process group, killed past `timeout_s`.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_TOOLS = ("guidellm", "aiperf", "vllm-bench")  # these count prompt tokens with a local tokenizer folder
# `vllm bench serve` without vllm's CLI module, which imports the whole engine (on a CPU-only install that can fail
# on a GPU-only dependency); this is what its `serve` subcommand runs
VLLM_BENCH = ("from vllm.benchmarks.serve import add_cli_args, main; "
              "from vllm.utils.argparse_utils import FlexibleArgumentParser as Parser; "
              "parser = Parser(); add_cli_args(parser); main(parser.parse_args())")


def run_bounded(command: list[str], log: Path, timeout_s: float, env: dict | None = None) -> int:
    """Run a tool in its own process group; past the timeout the whole group is killed."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                   start_new_session=True)
        try:
            return process.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return -9


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def qwenopt_env() -> dict:
    """This checkout's qwenopt first, ahead of whatever PYTHONPATH already holds (aiohttp/uvloop may come from it)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def missing(tool: str, args) -> str | None:
    """Why a tool cannot run here (so it is left out of the ladder), or None."""
    if tool == "qwenopt":
        done = subprocess.run([sys.executable, "-m", "qwenopt", "load", "--help"], env=qwenopt_env(), cwd=ROOT,
                              capture_output=True, text=True)
        return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["import failed"])[-1]
    if tool == "vllm-bench":
        if not Path(args.vllm_python).exists():
            return f"{args.vllm_python} not found"
        done = subprocess.run([args.vllm_python, "-c", "import vllm.benchmarks.serve"], capture_output=True, text=True)
        return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["import failed"])[-1]
    executable = {"guidellm": args.guidellm, "aiperf": args.aiperf}.get(tool)
    if executable is None:
        return f"unknown tool (known: {', '.join(RUNNERS)})"
    return None if Path(executable).exists() else f"{executable} not found"


def amount(args, rate: float) -> list[str]:
    """A level's length: `--num-requests N` where args set it (the same count for every tool), else `--duration`."""
    count = getattr(args, "num_requests", None)
    return ["--num-requests", str(count)] if count else ["--duration", str(args.duration)]


def run_qwenopt(args, server, rate: float, workdir: Path, timeout_s: float, extra: str = "") -> dict:
    out = workdir / f"qwenopt{extra}_{rate:g}.csv"
    command = [sys.executable, "-m", "qwenopt", "load", "--endpoint", server.url + "/v1", "--rate", str(rate),
               *amount(args, rate), "--input-len", str(args.input_len),
               "--output-len", str(args.output_len), "--out", str(out), *extra.replace("=", " ").split()]
    code = run_bounded(command, workdir / f"qwenopt{extra}_{rate:g}.log", timeout_s, qwenopt_env())
    if not out.exists():
        return {"error": f"exit {code}, no row"}
    with open(out) as handle:
        row = list(csv.DictReader(handle))[-1]
    number = lambda key: float(row[key]) if row.get(key) not in (None, "") else float("nan")  # noqa: E731
    return {"ttft_p50": number("ttft_p50_ms"), "ttft_p99": number("ttft_p99_ms"), "req_s": number("req_s"),
            "completed": int(number("completed")), "failed": int(number("failed") + number("timeouts")),
            "lag_p50": number("send_lag_p50_ms"), "lag_p99": number("send_lag_p99_ms"), "lag_name": "send_lag",
            "tpot_p50": number("tpot_p50_ms"), "itl_p50": number("itl_p50_ms"), "status": row.get("status", ""),
            "exit": code}


def run_vllm_bench(args, server, rate: float, workdir: Path, timeout_s: float) -> dict:
    """`vllm bench serve`, random dataset (text prompts from the local tokenizer), Poisson arrivals; its own figures
    from its result JSON. No ready-check request, so the server's truth covers only the measured requests."""
    name = f"vllm-bench_{rate:g}_{len(list(workdir.glob('vllm-bench_*.json')))}.json"
    count = getattr(args, "num_requests", None) or round(rate * args.duration)
    command = [args.vllm_python, "-c", VLLM_BENCH, "--backend", "openai", "--base-url", server.url,
               "--endpoint", "/v1/completions", "--model", "capacity-test", "--tokenizer", str(args.tokenizer_dir),
               "--dataset-name", "random", "--input-len", str(args.input_len), "--output-len", str(args.output_len),
               "--request-rate", str(rate), "--num-prompts", str(count), "--seed", "0",
               "--ready-check-timeout-sec", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
               "--metric-percentiles", "50,90,99", "--save-result", "--save-detailed", "--result-dir", str(workdir),
               "--result-filename", name]
    code = run_bounded(command, workdir / name.replace(".json", ".log"), timeout_s)
    if not (workdir / name).exists():
        return {"error": f"exit {code}, no result json"}
    data = json.loads((workdir / name).read_text())
    return {"ttft_p50": data["p50_ttft_ms"], "ttft_p99": data["p99_ttft_ms"], "req_s": data["request_throughput"],
            "completed": data["completed"], "failed": data["failed"], "lag_p50": float("nan"),
            "lag_p99": float("nan"), "lag_name": "none (TTFT from the task's start)", "tpot_p50": data["p50_tpot_ms"],
            "itl_p50": data["p50_itl_ms"], "detail": str(workdir / name), "exit": code}


def run_aiperf(args, server, rate: float, workdir: Path, timeout_s: float) -> dict:
    folder = workdir / f"aiperf_{rate:g}"
    command = [args.aiperf, "profile", "--model", "capacity-test", "--url", server.url,
               "--endpoint-type", "completions", "--streaming", "--tokenizer", str(args.tokenizer_dir),
               "--use-legacy-max-tokens", "--request-rate", str(rate), "--arrival-pattern", "poisson",
               "--benchmark-duration", str(args.duration), "--prompt-input-tokens-mean", str(args.input_len),
               "--prompt-input-tokens-stddev", "0", "--output-tokens-mean", str(args.output_len),
               "--output-tokens-stddev", "0", "--random-seed", "0", "--ui", "none", "--no-server-metrics",
               "--no-gpu-telemetry", "--use-server-token-count", "--artifact-dir", str(folder)]
    code = run_bounded(command, workdir / f"aiperf_{rate:g}.log", timeout_s)
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


def run_guidellm(args, server, rate: float, workdir: Path, timeout_s: float) -> dict:
    out = workdir / f"guidellm_{rate:g}.json"
    command = [args.guidellm, "run",
               "--backend", f"kind=openai_http,target={server.url},model=capacity-test,request_format=/v1/completions",
               "--profile", f"kind=poisson,rate={rate}", "--constraint", f"kind=max_duration,seconds={args.duration}",
               "--tokenizer", f"kind=hf_auto,model={args.tokenizer_dir}",
               "--data", f"kind=synthetic_text,prompt_tokens={args.input_len},output_tokens={args.output_len}",
               "--output", f"kind=json,path={out}", "--disable-console-interactive"]
    code = run_bounded(command, workdir / f"guidellm_{rate:g}.log", timeout_s)
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


def run_lean(args, server, rate: float, workdir: Path, timeout_s: float) -> dict:
    done = subprocess.run([str(server.binary), "drive", str(server.port), str(rate), str(args.duration),
                           str(args.output_len)], capture_output=True, text=True, timeout=max(timeout_s, 1.0))
    data = json.loads(done.stdout)
    return {"ttft_p50": data["ttft_p50_ms"], "ttft_p99": data["ttft_p99_ms"], "req_s": data["req_s"],
            "completed": data["ok"], "failed": data["sent"] - data["ok"], "lag_p50": data["send_lag_p50_ms"],
            "lag_p99": data["send_lag_p99_ms"], "lag_name": "send lag (TTFT from schedule)", "exit": done.returncode}


RUNNERS = {"qwenopt": run_qwenopt, "guidellm": run_guidellm, "aiperf": run_aiperf, "vllm-bench": run_vllm_bench}
