"""Record the real runs behind benchmarks/gate_accuracy.py: N runs of one small tiny-model CPU config, each into
its own CSV + samples sidecar (run_00.csv, run_01.csv, ...), exactly as `qwenopt bench` writes them.

Two ways, both used for results/cpu/gate_accuracy.txt:
  python3 benchmarks/gate_record.py 40 results/cpu/gate_runs                 # one interpreter, N bench commands
  python3 benchmarks/gate_record.py 40 results/cpu/gate_runs_process --process  # one process per run
  python3 benchmarks/gate_record.py 120 OUT --cuda      # the same config on the GPU (a GPU CI runner's gate)
  python3 benchmarks/gate_record.py 40 OUT --7b         # Qwen2.5-7B (random weights) at batch 1 on the GPU
  python3 benchmarks/gate_record.py 40 OUT --0.5b       # Qwen2.5-0.5B (random weights) at batch 1 on the CPU
A CI gate compares two processes (often two machines), so `--process` keeps the noise between processes, but each
run pays Python + torch start-up (on a busy 2-core machine that was 36-124 s a run). Without it every run is a full
`bench` command (model built, warm-up, repeats) inside one interpreter, started with OMP_NUM_THREADS=1 so the
timings do not depend on how two compute threads share two busy cores.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CONFIG = ["--regime", "hf-fp16", "--model", "qwen2-tiny", "--batch", "2", "--input-len", "32",
          "--output-len", "16", "--warmup", "1", "--repeats", "15", "--seed", "0"]


# Real work per step: the 7B architecture at batch 1 on the GPU (random weights, no download), whose decode step is
# tens of milliseconds of GPU work rather than the tiny model's few of Python (the tiny model's runs drift 15-17%
# run to run even on a quiet host: results/h100/gate)
CONFIG_7B = ["--regime", "hf-fp16", "--model", "qwen2.5-7b", "--weights", "random", "--batch", "1", "--input-len",
             "128", "--output-len", "64", "--warmup", "1", "--repeats", "8", "--seed", "0"]


# Arithmetic per step on the CPU: the 0.5B architecture's matrix products (about 1 GFLOP a token), timed by the
# CPU's matrix kernels rather than by Python's dispatch; on the GPU host the 7B model at batch 1 in eager mode was
# still dispatch-bound (TPOT 21-39 ms, run medians' CV 16%: results/h200/gate7b)
CONFIG_05B = ["--regime", "hf-fp16", "--model", "qwen2.5-0.5b", "--weights", "random", "--batch", "1", "--input-len",
              "32", "--output-len", "8", "--warmup", "1", "--repeats", "6", "--seed", "0"]


def main(runs: int, out: Path, process: bool, device: str = "cpu", config: list[str] = CONFIG) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not process:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from typer.testing import CliRunner

        from qwenopt.cli import app
    for i in range(runs):
        path = out / f"run_{i:02d}.csv"
        if path.exists():
            continue  # resumable: a finished run is kept
        start = time.perf_counter()
        if process:
            argv = [sys.executable, "-m", "qwenopt", "bench", *config, "--device", device, "--out", str(path)]
            subprocess.run(argv, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            result = CliRunner().invoke(app, ["bench", *config, "--device", device, "--out", str(path)])
            if result.exit_code:
                sys.exit(result.output)
        print(f"{path} {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    seven_b, half_b = "--7b" in sys.argv, "--0.5b" in sys.argv
    main(int(sys.argv[1]), Path(sys.argv[2]), "--process" in sys.argv,
         "cuda" if "--cuda" in sys.argv or seven_b else "cpu",
         CONFIG_7B if seven_b else CONFIG_05B if half_b else CONFIG)
