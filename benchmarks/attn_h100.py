"""Where attention matters: prefill (TTFT) and decode step (TPOT) at 8K, 32K and 128K context, per kernel.

    python3 benchmarks/attn_h100.py OUT --part 1   # 8K, batch 1 and 8: FA4, SDPA flash, FA4 with split-KV, SDPA
                                                  # efficient, SDPA default; then torch.compile (static cache) at 8K
                                                  # batch 1 for FA4 and SDPA default
    python3 benchmarks/attn_h100.py OUT --part 2   # 32K, batch 1 and 8: FA4, SDPA flash, SDPA default, SDPA efficient
    python3 benchmarks/attn_h100.py OUT --part 3   # 128K (YaRN, factor 4), batch 1: the same four; then --compile at
                                                  # 32K batch 1 for FA4 and SDPA default
    python3 benchmarks/attn_h100.py OUT --summary  # OUT/summary.md from the rows and sidecars already in OUT

Each part is one device call of at most --budget-s seconds (default 510, inside a 9-minute call): the steps run most
important first, a step that would not finish in what is left is skipped and logged, and a running step is stopped
at the deadline (its finished cells are already rows). 128K x batch 8 is not tried: its KV cache alone is
8 x 131,072 tokens x 56 KiB = 56 GiB beside 14.2 GiB of weights and the prefill activations.

Random weights of the Qwen2.5-7B architecture, one process per step (`python3 -m qwenopt bench`), output 32 tokens
(TPOT = mean decode step over 31 steps), warm-up 1, repeats 2. Rows go to OUT/attn_h100.csv; each step's warm-up
seconds (the first one pays the CuTe DSL JIT of flash-attn-4 and any torch.compile) go to the sidecar, and the
summary puts them beside the steady state. flash-attn-4 comes from --fa4-site (fa4-unbundle.sh's target): its
folder and the nvidia_cutlass_dsl/dsl_packages folder inside it go first on PYTHONPATH (a --target install does
not run nvidia-cutlass-dsl's .pth file). Nothing here is a figure; the rows are.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # device_steps beside this script
import device_steps  # noqa: E402
from device_steps import md_num  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUTPUT_LEN = 32
COMMON = ["--model", "qwen2.5-7b", "--weights", "random", "--device", "cuda", "--output-len", str(OUTPUT_LEN),
          "--warmup", "1", "--repeats", "2"]
YARN = ["--max-model-len", "131072"]  # input 131,040 + output 32 = 131,072 tokens: YaRN factor 4
FA4, FA4_SPLIT, FLASH = "flash_attention_4", "flash_attention_4+splitkv", "sdpa-flash"
EFFICIENT, DEFAULT = "sdpa-efficient", "sdpa"


def kernel(name: str) -> list[str]:
    """FA4 through its own regime (hf-fa4); the SDPA backends as hf-fp16 with --attn (their rows' attn says which)."""
    if name == FA4:
        return ["--regime", "hf-fa4"]
    return ["--regime", "hf-fa4" if name == FA4_SPLIT else "hf-fp16", "--attn", name]


# (name, bench arguments, seconds it is expected to need at most: a step with less time left is skipped)
PARTS = {
    "1": [(f"8k-{k}", [*kernel(k), "--input-len", "8192", "--batch", "1,8"], 90)
          for k in (FA4, FLASH, FA4_SPLIT, EFFICIENT, DEFAULT)]
         + [(f"8k-compile-{k}", [*kernel(k), "--input-len", "8192", "--batch", "1", "--compile"], 120)
            for k in (FA4, DEFAULT)],
    # --compile with sdpa-flash is refused (its static cache passes a mask, which SDPA's flash backend rejects: an
    # error row at 8K on the H100); SDPA's default backend takes the mask.
    # FA4_SPLIT only at 8K: flash-attn-4 4.0.0b36 asserts "SplitKV not supported on SM 9.0" (H100, measured)
    "2": [(f"32k-{k}", [*kernel(k), "--input-len", "32736", "--batch", "1,8"], 130)
          for k in (FA4, FLASH, DEFAULT, EFFICIENT)],
    "3": [(f"128k-{k}", [*kernel(k), "--input-len", "131040", "--batch", "1", *YARN], 120)
          for k in (FA4, FLASH, DEFAULT, EFFICIENT)]
         + [(f"32k-compile-{k}", [*kernel(k), "--input-len", "32736", "--batch", "1", "--compile"], 120)
            for k in (FA4, DEFAULT)],
}


def child_env(fa4_site: Path) -> dict:
    paths = [str(REPO), str(fa4_site), str(fa4_site / "nvidia_cutlass_dsl" / "dsl_packages")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_step(name: str, args: list[str], out: Path, env: dict, timeout_s: float) -> dict:
    """One `qwenopt bench` in its own process group, stopped (SIGINT, then SIGKILL) at the deadline."""
    argv = [sys.executable, "-m", "qwenopt", "bench", *COMMON, *args, "--out", str(out / "attn_h100.csv")]
    return {**device_steps.run_step(name, argv, out, timeout_s, env, REPO), "argv": argv[3:]}


def run_part(part: str, out: Path, fa4_site: Path, budget_s: float, steps: list[str] | None = None) -> None:
    """The part's steps, or the named steps of any part in the order given (a shorter call than a whole part)."""
    deadline = time.monotonic() + budget_s
    env = child_env(fa4_site)
    known = {step[0]: step for steps_of_part in PARTS.values() for step in steps_of_part}
    unknown = [name for name in steps or [] if name not in known]
    if unknown:
        sys.exit(f"unknown step(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for name, args, need_s in [known[n] for n in steps] if steps else PARTS[part]:
        left = deadline - time.monotonic()
        if left < need_s:
            record = {"step": name, "skipped": f"{left:.0f} s left of the budget, the step needs up to {need_s} s"}
        else:
            record = run_step(name.replace("+", "-"), args, out, env, left)  # file names without odd characters
        with open(out / "steps.jsonl", "a") as handle:
            handle.write(json.dumps({"part": part, **record}) + "\n")
        print(json.dumps(record), flush=True)


def summary(out: Path) -> str:
    """A table per row: steady-state TTFT and TPOT beside the warm-up seconds (the first call's JIT/compile)."""
    sys.path.insert(0, str(REPO))
    from qwenopt.results import read_rows, read_samples

    csv = out / "attn_h100.csv"
    warmups = {(s["run_id"], s["batch_size"], s["input_len"]): s.get("warmup_s") or [] for s in read_samples(csv)}
    lines = ["| regime | attn | decode | batch | input | status | TTFT p50 ms | TPOT p50 ms | warm-up s | torch peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in read_rows(csv):
        warm = warmups.get((r["run_id"], r["batch_size"], r["input_len"]), [])
        cells = [r["regime"], r["attn"], r["decode_mode"], r["batch_size"], r["input_len"],
                 r["status"] if r["status"] == "ok" else f"{r['status']}: {str(r.get('error'))[:80]}",
                 md_num(r.get("ttft_p50_ms")), md_num(r.get("tpot_p50_ms")), ", ".join(f"{w:.1f}" for w in warm) or "-",
                 md_num(r.get("torch_peak_alloc_gib"), 1)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--part", choices=sorted(PARTS))
    parser.add_argument("--summary", action="store_true", help="Only write OUT/summary.md from the rows in OUT.")
    parser.add_argument("--fa4-site", type=Path, default=Path("/tmp/fa4site"))
    parser.add_argument("--budget-s", type=float, default=510.0)
    parser.add_argument("--steps", help="Comma-separated step names (of any part) to run instead of a part, e.g. "
                                        "32k-flash_attention_4,128k-sdpa-flash")
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.part or ns.steps:
        run_part(ns.part or "steps", ns.out, ns.fa4_site, ns.budget_s, ns.steps.split(",") if ns.steps else None)
    elif not ns.summary:
        parser.error("give --part, --steps or --summary")
    if (ns.out / "attn_h100.csv").is_file():
        (ns.out / "summary.md").write_text(summary(ns.out))
        print((ns.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
