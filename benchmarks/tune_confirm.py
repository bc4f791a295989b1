"""Re-measure a `tune --launch` search's winner against vLLM's defaults, at the same offered rates, on fresh starts.

    python3 benchmarks/tune_confirm.py results/h200/tune/tune_int4.csv OUT [--rounds 1] [--level-s 15]
    python3 benchmarks/tune_confirm.py results/h200/tune/tune_int4.csv OUT --dry-run   # the commands only

Why: a trial's goodput is the highest of a few 8-second levels whose P99 met the SLO, and one level's P99 rests on a
few hundred requests: within one trial of the first search, P99 E2E read 1.61 / 1.82 / 1.18 s at 48.1 / 49.4 / 50.0
req/s (results/h100/tune/first-search). A winner that beats the defaults by a few percent may be that noise. Here
both configurations are started again (defaults, winner, defaults, ... for --rounds rounds) and each is measured at
the same rates, the two rates at which each trial had its best level, with longer levels; every level is a
`qwenopt load` row in OUT/confirm.csv (its engine_args say which configuration), and the table at the end says, per
rate, whether each met the SLO. Each start is one `vllm serve` (about two minutes): two starts per round.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from qwenopt.results import read_jsonl  # noqa: E402
from qwenopt.serving.metrics import parse_slo  # noqa: E402
from qwenopt.serving.tune_online import read_trials, trials_path, winner  # noqa: E402
from qwenopt.serving.tune_trial import level_verdict  # noqa: E402


def pick(out: Path) -> tuple[dict, dict]:
    """The latest study's trial 0 and winner, each as the load row of its best level."""
    records = read_jsonl(trials_path(out))
    if not records:
        sys.exit(f"{trials_path(out)}: no trials")
    study = records[-1]["study"]
    results, _ = read_trials(out, study)
    best = winner(results)
    default = next((r for r in results if r.trial == 0 and r.status == "ok"), None)
    if best is None or default is None:
        sys.exit("no winner, or vLLM's defaults met the SLO at no level: nothing to confirm")
    rows = pd.read_csv(out)
    rows = rows[(rows["study"] == study) & (rows["class"] == "all")]

    def best_level(result) -> dict:
        mine = rows[(rows["trial"] == result.trial) & (rows["trial_status"] == "ok")]
        return mine.loc[(mine["req_s"] - result.goodput_req_s).abs().idxmin()].to_dict()

    return best_level(default), best_level(best)


def offered(level: dict) -> float:
    """The level's offered rate: an open-loop level's rate, or what a closed-loop burst achieved."""
    rate = level.get("rate")
    return float(rate) if pd.notna(rate) else float(level["req_s"])


def load_command(level: dict, rates: list[float], level_s: float, out: Path, label: str, seed: int) -> list[str]:
    quant = ["--quant", str(level["quant"])] if level["regime"] == "vllm-int4" and pd.notna(level.get("quant")) else []
    return [sys.executable, "-m", "qwenopt", "load", "--launch", level["regime"], *quant, "--model", level["model"],
            "--weights", level["weights"], "--input-len", str(int(level["input_len"])), "--output-len",
            str(int(level["output_len"])), "--rate", ",".join(f"{r:.3f}" for r in rates), "--duration", str(level_s),
            "--slo", str(level["slo"]), "--seed", str(seed), "--engine-args", level["engine_args"] or "{}",
            "--server-log", str(out / f"serve_{label}.log"), "--out", str(out / "confirm.csv")]


def table(out: Path, labels: dict[str, str]) -> str:
    rows = pd.read_csv(out / "confirm.csv")
    rows = rows[rows["class"] == "all"]
    lines = ["| configuration | start | offered req/s | req/s | P99 E2E s | P99 TTFT ms | goodput req/s | SLO (as tune "
             "judges a level) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        name = labels.get(r["engine_args"], r["engine_args"])
        verdict = level_verdict(r.to_dict(), parse_slo(r["slo"])) or "met"
        lines.append(f"| {name} | {r['run_id']} | {r['rate']:.2f} | {r['req_s']:.2f} | {r['latency_p99_s']:.3f} | "
                     f"{r['ttft_p99_ms']:.0f} | {r['goodput_req_s']:.2f} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tune_csv", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=1, help="defaults-then-winner rounds (two starts each)")
    parser.add_argument("--level-s", type=float, default=15.0, help="seconds of arrivals per level")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    default, best = pick(args.tune_csv)
    if best["trial"] == default["trial"]:
        print("vLLM's defaults won the search: nothing to confirm")
        return
    rates = sorted({round(offered(default), 3), round(offered(best), 3)})
    labels = {default["engine_args"]: "defaults (trial 0)", best["engine_args"]: f"winner (trial {best['trial']})"}
    print(f"re-measuring trial 0 and trial {best['trial']} ({best['trial_config']}) at {rates} req/s, "
          f"{args.level_s:g} s levels, {args.rounds} round(s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for round_ in range(args.rounds):
        for name, level in (("defaults", default), ("winner", best)):
            argv = load_command(level, rates, args.level_s, args.out, f"{name}_{round_}", seed=round_)
            print("$ " + " ".join(argv), flush=True)
            if not args.dry_run:
                code = subprocess.run(argv).returncode
                print(f"exit {code}", flush=True)
    if not args.dry_run and (args.out / "confirm.csv").exists():
        text = table(args.out, labels)
        (args.out / "summary.md").write_text(json.dumps({"rates": rates}) + "\n\n" + text + "\n")
        print(text)


if __name__ == "__main__":
    main()
