"""The online proofs on one GPU host (random weights of Qwen2.5-7B, input 512 / output 128).

    python3 benchmarks/online_h100.py crosscheck OUT   # one vllm serve: vllm bench serve and qwenopt load at the
                                                       # same rates, then qwenopt's sweep of vllm-fp16 for the matrix
    python3 benchmarks/online_h100.py vllm-int4 OUT    # AWQ with the Marlin kernel, swept for the matrix
    python3 benchmarks/online_h100.py vllm-int4-machete OUT   # AWQ with vLLM's default kernel (Machete on Hopper)
    python3 benchmarks/online_h100.py hf OUT           # transformers serve: hf-fp16 plain and continuous batching, hf-nf4
    python3 benchmarks/online_h100.py ab OUT           # vllm bench / qwenopt (token ids) / qwenopt (text) / vllm bench
    python3 benchmarks/online_h100.py matched OUT [N]  # 32 req/s: vllm bench --temperature 0 and qwenopt (text),
                                                       # seeds 0..N-1 each (default 3), and vllm bench at the
                                                       # default temperature; about 34 s a run after the start

Why input 512 / output 128: a chat turn with a few paragraphs of context and a paragraph of answer, short enough that
transformers' plain server finishes a request inside the reference deployment's 30 s timeout, and the workload of the
earlier `vllm bench serve` cross-check in shared/DESIGN.md. Every figure lands in OUT as qwenopt rows (with their
fingerprint) or as `vllm bench serve`'s own JSON; nothing here is a figure.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

IN, OUTLEN = 512, 128
COMMON = ["--model", "qwen2.5-7b", "--weights", "random", "--input-len", str(IN), "--output-len", str(OUTLEN)]


def sh(argv: list, log: Path) -> int:
    """Run one step, its output appended to the stage's log (and echoed, so the device call shows progress)."""
    argv = [str(a) for a in argv]
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(argv)}\n")
        handle.flush()
        code = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT).returncode
    print(f"[{code}] {' '.join(argv)[:160]}", flush=True)
    return code


def qwenopt(*args) -> list:
    return [sys.executable, "-m", "qwenopt", *args]


def vllm_bench(server, out: Path, rate: int, count: int, filename: str, *extra) -> list:
    """`vllm bench serve` on the random dataset (text prompts through the folder's tokenizer) at one rate."""
    folder = server.command[server.command.index("serve") + 1]  # the random model folder, tokenizer included
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend", "vllm",
            "--base-url", server.base_url.removesuffix("/v1"), "--model", folder, "--served-model-name", server.model,
            "--tokenizer", folder, "--dataset-name", "random", "--input-len", IN, "--output-len", OUTLEN,
            "--ignore-eos", "--request-rate", rate, "--num-prompts", count, *extra,
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99", "--save-result",
            "--result-dir", out, "--result-filename", filename]


@contextlib.contextmanager
def fp16_server(out: Path):
    """The cross-check stages' one `vllm serve` (vllm-fp16, random weights, port 8000), its log in OUT."""
    from qwenopt.bench import BenchOptions, plan_sweep
    from qwenopt.serving.launcher import launch_server

    plan = plan_sweep(BenchOptions(regime="vllm-fp16", model="qwen2.5-7b", weights="random", device="cuda",
                                   max_model_len=4096, batch="1", input_len=str(IN), output_len=str(OUTLEN)))
    with launch_server(plan.spec, plan.engine_options(), port=8000, log_path=out / "serve_vllm-fp16.log") as server:
        print(f"vllm serve up in {server.startup_s:.0f} s", flush=True)
        yield server


def crosscheck(out: Path, rates=(8, 32, 96), duration=15, sweep="4,8,16,24,32,40,48,56,64,80", level_s=12) -> None:
    log = out / "crosscheck.log"
    with fp16_server(out) as server:
        for rate in rates:
            sh(vllm_bench(server, out, rate, rate * duration, f"vllm-bench_rate{rate}.json", "--seed", 0), log)
            sh(qwenopt("load", "--endpoint", server.base_url, "--regime", "vllm-fp16", *COMMON, "--rate", rate,
                       "--duration", duration, "--out", out / "load_crosscheck_vllm-fp16.csv"), log)
        sh(qwenopt("load", "--endpoint", server.base_url, "--regime", "vllm-fp16", *COMMON, "--rate", sweep,
                   "--duration", level_s, "--out", out / "online_vllm-fp16.csv"), log)


def ab(out: Path, rates=(8, 32), duration=15) -> None:
    """Where qwenopt and vllm bench serve differ below saturation: the same request count at each rate, vllm bench
    (text prompts) before and after qwenopt with token-id prompts (vllm dialect) and with text (openai dialect)."""
    log = out / "ab.log"
    with fp16_server(out) as server:
        for rate in rates:
            count = rate * duration
            for label in ("a", "ids", "text", "b"):
                if label in ("a", "b"):
                    sh(vllm_bench(server, out, rate, count, f"vllm-bench_rate{rate}_{label}.json", "--seed", 0), log)
                else:
                    sh(qwenopt("load", "--endpoint", server.base_url, "--regime", "vllm-fp16", *COMMON,
                               "--dialect", "vllm" if label == "ids" else "openai", "--rate", rate,
                               "--num-requests", count, "--out", out / f"load_ab_{label}.csv"), log)


def matched(out: Path, rates=(32,), seeds=(0, 1, 2), duration=15) -> None:
    """The gap that is left below saturation with the clients ruled out (results/cpu/vllm_bench_agreement.txt: against
    a server of known timing they read the same TTFT within 0.7 ms and the same TPOT): are the two loads served
    differently? vllm bench 0.26 sends no temperature (vLLM then samples at 1.0) where qwenopt sends 0, and the two
    draw different arrivals. Here vllm bench runs greedy too, and each tool with three seeds (arrivals and prompts),
    then vllm bench once at the server's default temperature, on one server, the same count at each rate. At 32 req/s,
    where the gap was widest; seven runs of about 34 s each (the ab stage's pace) after vLLM's ~2 min start."""
    log = out / "matched.log"
    with fp16_server(out) as server:
        for rate in rates:
            count = rate * duration
            for seed in seeds:
                sh(vllm_bench(server, out, rate, count, f"vllm-bench-t0_rate{rate}_seed{seed}.json", "--seed", seed,
                              "--temperature", 0), log)
                sh(qwenopt("load", "--endpoint", server.base_url, "--regime", "vllm-fp16", *COMMON, "--dialect",
                           "openai", "--rate", rate, "--num-requests", count, "--seed", seed,
                           "--out", out / "load_matched_text.csv"), log)
            sh(vllm_bench(server, out, rate, count, f"vllm-bench-default_rate{rate}_seed0.json", "--seed", 0), log)


def vllm_int4(out: Path, sweep="4,8,16,24,32,40,48,56,64,80", level_s=12) -> None:
    sh(qwenopt("load", "--launch", "vllm-int4", "--quant", "awq", "--engine-args", '{"linear_backend": "marlin"}',
               "--max-model-len", 4096, *COMMON, "--rate", sweep, "--duration", level_s,
               "--server-log", out / "serve_vllm-int4.log", "--out", out / "online_vllm-int4.csv"), out / "int4.log")


def vllm_int4_machete(out: Path, sweep="4,8,16,24,32,40,48,56,64,80", level_s=12) -> None:
    """vLLM's default int4 kernel for AWQ on Hopper (Machete), the same sweep: which kernel serves more at the SLO."""
    sh(qwenopt("load", "--launch", "vllm-int4", "--quant", "awq", "--max-model-len", 4096, *COMMON, "--rate", sweep,
               "--duration", level_s, "--server-log", out / "serve_vllm-int4-machete.log",
               "--out", out / "online_vllm-int4-machete.csv"), out / "int4-machete.log")


def hf(out: Path) -> None:
    log = out / "hf.log"
    # closed loop: the plain server answers one request at a time (seconds each), so users, not rates, and
    # levels bounded by time; the launcher's own warm-up request has already compiled and allocated
    sh(qwenopt("load", "--launch", "hf-fp16", *COMMON, "--concurrency", "1,2", "--duration", 20,
               "--server-log", out / "serve_hf-fp16.log", "--out", out / "online_hf-fp16.csv"), log)
    sh(qwenopt("load", "--launch", "hf-fp16", "--continuous-batching", *COMMON, "--concurrency", "1,4,16,32",
               "--duration", 20, "--server-log", out / "serve_hf-fp16-cb.log",
               "--out", out / "online_hf-fp16-cb.csv"), log)
    sh(qwenopt("load", "--launch", "hf-nf4", *COMMON, "--concurrency", "1,2", "--duration", 20,
               "--server-log", out / "serve_hf-nf4.log", "--out", out / "online_hf-nf4.csv"), log)


if __name__ == "__main__":
    stage, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    if stage == "matched" and len(sys.argv) > 3:  # more seeds: the H200 run's three could not tell the tools apart
        matched(folder, seeds=tuple(range(int(sys.argv[3]))))
    else:
        {"crosscheck": crosscheck, "ab": ab, "matched": matched, "vllm-int4": vllm_int4,
         "vllm-int4-machete": vllm_int4_machete, "hf": hf}[stage](folder)
