"""Speculative decoding what-if on one H100: no speculation vs an EAGLE-3 head vs the 0.5B draft, offline.

    python3 benchmarks/spec_h100.py OUT            # one device call (OUT: "$OUT/spec" on the device machine)
    python3 benchmarks/spec_h100.py OUT2 --steps nospec-v1,draft-k4-L3,draft-k4-L3-async   # a second call
    python3 benchmarks/spec_h100.py OUT --dry-run  # the commands only (no GPU)
    python3 benchmarks/spec_h100.py OUT --summary  # OUT/summary.md from the rows in OUT (also written after a run)

Every step is one `python3 -m qwenopt bench --regime vllm-int4 --quant awq --model qwen2.5-7b --weights random
--batch 1,8,64 --input-len 128 --output-len 256 --warmup 1 --repeats 2` (the issue's figures: input 128, output 256,
batch 1 / 8 / 64), i.e. one vLLM engine start, with the step's speculative_config in --engine-args (no `model`:
qwenopt writes the method's random-weight drafter and fills its folder in). The acceptance is ASSUMED, never
measured: random weights accept nothing real, so vLLM's synthetic rejection sampler accepts drafts at the rates it
is told (`synthetic_acceptance_length` L: a step yields L tokens on average). Each step's rows go to OUT/STEP.csv,
its log to OUT/STEP.log, its record to OUT/steps.jsonl; a row's decode_mode says what ran
(`cuda-graphs+spec-eagle3-k4-assumed-L3.00`; nospec and nospec-v1 rows look alike: the runner is no column).
Compare steps of one call (one folder) only.

Steps, most decisive first. The default run is the first four (the fourth only where time is left): no speculation
against the EAGLE-3 head on vLLM's default V2 runner. The second call compares on the V1 runner the draft model
forces: no speculation, the draft, the draft with async scheduling. --steps picks any of them, in the order given:
  nospec            vLLM's defaults (V2 model runner, async scheduling): the baseline, rerun on this card
  eagle3-k4-L3      a random EAGLE-3 head, 4 draft tokens, L = 3.0: the assumption the draft model lost at
  eagle3-k2-L3      the same head, 2 draft tokens, L = 3.0: the same 3 tokens per step for half the draft passes
  draft-k4-L3       the 0.5B draft, 4 tokens, L = 3.0, vLLM's defaults (V1 runner, no async): the issue's losing
                    configuration, on the same card as the rest
  draft-k4-L3-async the same with async scheduling forced on (vLLM 0.26 allows it): how much of the loss is
                    the serialized scheduler
  nospec-v1         no speculation on the V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0), where the draft model
                    runs: how much of the draft's loss is the runner, not the speculation

Time per step: an engine start took 99-151 s on the H100 (measured, no speculation); the drafter adds its own
compile and CUDA graph capture (not measured yet). Generation is about 20-40 s: 3 iterations (warm-up + 2) x 3
batches of 256 tokens, at the issue's measured 79-8,315 output tok/s. So expect 130-200 s a step: the default
budget (510 s, inside a 9-minute call) fits the first three steps; a step that would not fit what is left is
skipped and logged, and a running step is stopped at the deadline (SIGINT: its finished cells are rows; the batches
run 1, 8, 64, so the low-batch cells, where speculation can pay, come first). Nothing here is a figure; the rows are.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # device_steps beside this script
import device_steps  # noqa: E402
from device_steps import md_num  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
COMMON = ["--regime", "vllm-int4", "--quant", "awq", "--model", "qwen2.5-7b", "--weights", "random",
          "--batch", "1,8,64", "--input-len", "128", "--output-len", "256", "--warmup", "1", "--repeats", "2"]


@dataclass(frozen=True)
class Step:
    name: str
    method: str | None  # speculative method, None: no speculation
    tokens: int = 0  # draft tokens per step
    length: float | None = None  # the ASSUMED mean acceptance length (synthetic_acceptance_length)
    extra: dict = field(default_factory=dict)  # other engine args
    env: dict = field(default_factory=dict)  # environment of the bench process
    need_s: int = 170  # seconds it is expected to need at most: with less left it is skipped


STEPS = [
    Step("nospec", None, need_s=150),
    Step("eagle3-k4-L3", "eagle3", 4, 3.0),
    Step("eagle3-k2-L3", "eagle3", 2, 3.0),
    Step("draft-k4-L3", "draft_model", 4, 3.0, need_s=200),
    Step("draft-k4-L3-async", "draft_model", 4, 3.0, {"async_scheduling": True}, need_s=200),
    Step("nospec-v1", None, env={"VLLM_USE_V2_MODEL_RUNNER": "0"}, need_s=150),
]
DEFAULT_STEPS = ("nospec", "eagle3-k4-L3", "eagle3-k2-L3", "draft-k4-L3")


def engine_args(method: str | None, tokens: int, length: float | None, extra: dict) -> dict:
    """The step's --engine-args: vLLM's speculative_config without a `model`, which qwenopt fills in with the
    method's random-weight drafter (engines/vllm_spec.with_random_drafter), so the logged command is the one a user
    types."""
    if method is None:
        return dict(extra)
    spec = {"method": method, "num_speculative_tokens": tokens, "rejection_sample_method": "synthetic",
            "synthetic_acceptance_length": length}
    return {"speculative_config": spec, **extra}


def argv_of(step: Step, out: Path) -> list[str]:
    args = engine_args(step.method, step.tokens, step.length, step.extra)
    return [sys.executable, "-m", "qwenopt", "bench", *COMMON, "--out", str(out / f"{step.name}.csv"),
            *(["--engine-args", json.dumps(args)] if args else [])]


def run_step(name: str, argv: list[str], out: Path, timeout_s: float, extra_env: dict | None = None) -> dict:
    """One `qwenopt bench` in its own process group, stopped (SIGINT, then SIGKILL) at the deadline."""
    env = {**os.environ, **(extra_env or {}),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return device_steps.run_step(name, argv, out, timeout_s, env, REPO)


def run(names: list[str], out: Path, budget_s: float, dry_run: bool = False) -> list[dict]:
    deadline = time.monotonic() + budget_s
    known = {step.name: step for step in STEPS}
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"unknown step(s) {', '.join(unknown)}; known: {', '.join(known)}")
    records = []
    for name in names:
        step = known[name]
        argv = argv_of(step, out)
        left = deadline - time.monotonic()
        if dry_run:
            record = {"step": name, "argv": argv[1:], "env": step.env}
        elif left < step.need_s:
            record = {"step": name, "skipped": f"{left:.0f} s left of the budget, the step needs up to {step.need_s} s"}
        else:
            record = {**run_step(name, argv, out, left, step.env), "argv": argv[3:], "env": step.env}
        if not dry_run:
            with open(out / "steps.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


def summary(out: Path) -> str:
    """Output tok/s per step and batch, beside the same call's no-speculation rows of that batch (nospec: vLLM's
    defaults, V2 runner; nospec-v1: the V1 runner the draft model runs on), with where the time goes: TTFT and TPOT
    (vLLM's per-request timestamps) and E2E against the wall time of a whole generate() call (batch x 256 tokens /
    output tok/s), so a cost outside the requests' token timeline shows as wall >> E2E."""
    from qwenopt.results import read_rows

    rows = {step.name: [r for r in read_rows(out / f"{step.name}.csv") if r["status"] == "ok"] for step in STEPS}
    bases = {name: {r["batch_size"]: float(r["output_tok_s"]) for r in rows[name]} for name in ("nospec", "nospec-v1")}
    lines = ["Speculation's acceptance is ASSUMED (vLLM's synthetic sampler), never measured: L = mean tokens a "
             "verification step yields.", "",
             "| step | decode_mode | batch | output tok/s | vs nospec | vs nospec-v1 | TTFT p50 ms | TPOT p50 ms | "
             "E2E p50 s | wall/call s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for step in STEPS:
        for r in rows[step.name]:
            tok_s = float(r["output_tok_s"])
            ratios = [f"{tok_s / base[r['batch_size']]:.2f}x" if base.get(r["batch_size"]) else "-"
                      for base in bases.values()]
            wall = int(r["batch_size"]) * int(r["output_len"]) / tok_s
            cells = [step.name, r["decode_mode"], r["batch_size"], f"{tok_s:,.1f}", *ratios, md_num(r["ttft_p50_ms"]),
                     md_num(r["tpot_p50_ms"], 2), md_num(r["latency_p50_s"], 3), f"{wall:.3f}"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", help=f"Comma-separated steps, in order (default {','.join(DEFAULT_STEPS)}); "
                                        f"known: {', '.join(s.name for s in STEPS)}")
    parser.add_argument("--budget-s", type=float, default=510.0)
    parser.add_argument("--dry-run", action="store_true", help="Print the commands only.")
    parser.add_argument("--summary", action="store_true", help="Only write OUT/summary.md from the rows in OUT.")
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    if not ns.summary:
        run(ns.steps.split(",") if ns.steps else list(DEFAULT_STEPS), ns.out, ns.budget_s, ns.dry_run)
    if any((ns.out / f"{step.name}.csv").is_file() for step in STEPS):
        (ns.out / "summary.md").write_text(summary(ns.out))
        print((ns.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
