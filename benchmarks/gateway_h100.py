"""The gateway's GPU proof (issue 12): vllm-fp16, random weights of Qwen2.5-7B, one H100.

Mixed web traffic, 80% short (64 in / 64 out) and 20% long (4,096 in / 256 out), at 0.8x, 1.0x and 1.5x the
saturation rate: (a) FCFS without the gateway, (b) vLLM priority scheduling through the gateway (no admission
control), (c) the same plus bounded admission; then the gateway's added latency at low load. Two steps, one
`vllm serve` start each, each inside one 10-minute device call; rows go to one CSV per configuration:

    python3 benchmarks/gateway_h100.py fcfs      results/h100/gateway  # saturation burst, then (a)
    python3 benchmarks/gateway_h100.py priority  results/h100/gateway  # (b), (c), overhead; needs fcfs's rates
    python3 benchmarks/gateway_h100.py chunked   results/h100/gateway  # (d), (e): vLLM prefill chunks of 2,048
                                                                       # tokens; (e) caps the low class in flight

(d) and (e) follow from (a)-(c): no configuration met TTFT <= 200 ms for short requests because a whole 4,096-token
prefill fits one engine step (max_num_batched_tokens 8,192) and admission let long requests hold most places.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qwenopt.bench import BenchOptions, plan_sweep  # noqa: E402
from qwenopt.serving.launcher import launch_server  # noqa: E402

MIX = "short=0.8:64:64,long=0.2:4096:256"
SLO = "ttft=200ms"
LEVEL_S = "25"
ADMISSION = "[gateway]\nmax_in_flight = 64\nqueue_high = 256\nqueue_medium = 64\nqueue_low = 16\n"
CLASS_CAP = "[gateway]\nmax_in_flight = 128\nin_flight_low = 16\nqueue_high = 256\nqueue_medium = 64\nqueue_low = 16\n"
CHUNK = {"max_num_batched_tokens": 2048}  # vLLM engine argument for step "chunked"


def load(url: str, out: Path, *args: str) -> None:
    """One `qwenopt load` against the running server; a level with failed requests is a row, not a stop."""
    command = [sys.executable, "-m", "qwenopt", "load", "--endpoint", url, "--regime", "vllm-fp16",
               "--weights", "random", "--mix", MIX, "--slo", SLO, "--out", str(out), *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=False)


def saturation(csv: Path) -> float:
    rows = pd.read_csv(csv)
    return float(rows[(rows["mode"] == "closed") & (rows["class"] == "all")].iloc[-1]["req_s"])


def main(step: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    plan = plan_sweep(BenchOptions(regime="vllm-fp16", model="qwen2.5-7b", weights="random", device="cuda",
                                   max_model_len=8192, batch="1", input_len="64", output_len="64",
                                   engine_args=CHUNK if step == "chunked" else {}))
    policy = "fcfs" if step == "fcfs" else "priority"
    rates_file = folder / "rates.txt"
    with launch_server(plan.spec, plan.engine_options(), port=8000, log_path=folder / f"vllm_{step}.log",
                       scheduling_policy=policy) as server:
        url = server.base_url
        print(f"vllm serve ({policy}) ready in {server.startup_s:.0f} s", flush=True)
        if step == "fcfs":
            load(url, folder / "saturation.csv", "--concurrency", "256", "--duration", "20", "--warmup", "32")
            sat = saturation(folder / "saturation.csv")
            rates = ",".join(f"{f * sat:.1f}" for f in (0.8, 1.0, 1.5))
            rates_file.write_text(rates + "\n")
            print(f"saturation {sat:.1f} req/s; rates (0.8x, 1.0x, 1.5x): {rates}", flush=True)
            load(url, folder / "a_fcfs.csv", "--rate", rates, "--duration", LEVEL_S)
            return
        rates = rates_file.read_text().strip()
        (folder / "b.toml").write_text("[gateway]\nmax_in_flight = 0\n")
        (folder / "c.toml").write_text(ADMISSION)
        (folder / "e.toml").write_text(CLASS_CAP)
        runs = (("d_priority_chunk2048", "b.toml"), ("e_classcap_chunk2048", "e.toml")) if step == "chunked" \
            else (("b_priority", "b.toml"), ("c_admission", "c.toml"))
        for name, config in runs:
            load(url, folder / f"{name}.csv", "--rate", rates, "--duration", LEVEL_S, "--scheduling-policy",
                 "priority", "--gateway", "--gateway-config", str(folder / config))
        if step == "chunked":
            return
        with open(folder / "overhead.txt", "w") as text:
            subprocess.run([sys.executable, str(ROOT / "benchmarks/gateway_overhead.py"), "--upstream", url,
                            "--requests", "200", "--tokens", "16"], stdout=text, check=False)
        print((folder / "overhead.txt").read_text(), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("fcfs", "priority", "chunked"):
        sys.exit("usage: gateway_h100.py fcfs|priority|chunked FOLDER")
    main(sys.argv[1], Path(sys.argv[2]))
