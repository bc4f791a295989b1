"""How often does the CI gate cry wolf, and how often does it miss? A/A and A/B pairs of real recorded runs.

Input: the `qwenopt bench` runs of one tiny-model CPU config that benchmarks/gate_record.py recorded, each its
own CSV row and samples sidecar: results/cpu/gate_runs/ (40 runs, one interpreter, OMP_NUM_THREADS=1) and
results/cpu/gate_runs_process/ (one process per run, default threads; as many as there was time for).
Pairs: disjoint, run 2i as base and run 2i+1 (recorded right after it) as new: 20 pairs from 40 runs, N // 2
from fewer.
A/A: the pair as recorded. A/B: the same pair with a slowdown planted in the new run by scaling every one of its
recorded request timings (e2e_s and ttft_s) by 1.05 or 1.10, and its row's latency/TTFT/TPOT columns by the same
factor and its throughput columns (output_tok_s, total_tok_s, req_s) by its inverse, so the planted run is the
recorded run made uniformly 5% or 10% slower, with its real noise kept.
Gates, both at the default tolerance of 5% on the default metrics (output_tok_s, latency_p50_s, tpot_p50_ms):
the old point gate (the row values only: fail when any change is beyond 5%) and the new gate (bootstrap interval
over the repeats; `noisy` passes by default, and is also counted as failing for --fail-on-noisy).
A false alarm is a failing A/A pair; a miss is a passing A/B pair.

Run from the repository root: `python3 benchmarks/gate_accuracy.py > results/cpu/gate_accuracy.txt` (or name run
folders). results/cpu/gate_runs_quiet/ was recorded like gate_runs/ once the machine was otherwise idle (load ~0.9).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's qwenopt, not an installed one
from qwenopt.compare import DEFAULT_METRICS, compare, failed, pool_runs  # noqa: E402
from qwenopt.results import read_results, read_samples  # noqa: E402

RUN_SETS = tuple(Path(a) for a in sys.argv[1:]) or (
    Path("results/cpu/gate_runs"), Path("results/cpu/gate_runs_process"), Path("results/cpu/gate_runs_quiet"))
THRESHOLD = 0.05
PLANTS = (1.00, 1.05, 1.10, 1.25)
POOL = 3  # runs a side in the pooled evaluation
SLOWER = ("latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_mean_s", "ttft_p50_ms", "ttft_p99_ms",
          "tpot_p50_ms", "tpot_p99_ms")
FASTER = ("output_tok_s", "total_tok_s", "req_s")


def load_runs(folder: Path) -> list[tuple[pd.DataFrame, list[dict]]]:
    return [(read_results(p), read_samples(p)) for p in sorted(folder.glob("run_*.csv"))]


def pairs(count: int) -> list[tuple[int, int]]:
    return [(2 * i, 2 * i + 1) for i in range(min(20, count // 2))]


def planted(frame: pd.DataFrame, records: list[dict], factor: float) -> tuple[pd.DataFrame, list[dict]]:
    """The run made uniformly `factor` times slower: every timing scaled, the row's figures with it."""
    frame = frame.copy()
    for column in SLOWER:
        frame[column] = frame[column] * factor
    for column in FASTER:
        frame[column] = frame[column] / factor
    scaled = [{**r, "samples": [{**s, "e2e_s": s["e2e_s"] * factor, "ttft_s": s["ttft_s"] * factor}
                                for s in r["samples"]]} for r in records]
    return frame, scaled


def main() -> None:
    for folder in RUN_SETS:
        runs = load_runs(folder)
        if len(runs) < 2:
            sys.exit(f"record runs first: python3 benchmarks/gate_record.py 40 {folder}")
        evaluate(folder, runs)
        if len(runs) >= 2 * POOL * 20:
            evaluate_pooled(folder, runs)


def side(runs: list[tuple[pd.DataFrame, list[dict]]], factor: float = 1.0) -> tuple[pd.DataFrame, list[dict]]:
    """Several runs as one side of the gate, as `compare` reads a folder of runs (each file one RUN)."""
    return pool_runs([planted(frame, records, factor) for frame, records in runs])


def evaluate_pooled(folder: Path, runs: list[tuple[pd.DataFrame, list[dict]]]) -> None:
    """20 disjoint groups of 2 x POOL consecutive runs, interleaved as a CI job would record them (base, new,
    base, new, ...): the gate on one run a side (the group's first two) against the gate on POOL runs a side."""
    groups = [list(range(i * 2 * POOL, (i + 1) * 2 * POOL)) for i in range(20)]
    print(f"== {folder}: pooled, 20 disjoint groups of {2 * POOL} consecutive runs; base = runs 0, 2, 4..., new = "
          f"runs 1, 3, 5... of each group (interleaved); tolerance {THRESHOLD:.0%} on {', '.join(DEFAULT_METRICS)}\n")
    print(f"{'pairs':<12}{'1 run a side fails':>20}{f'{POOL} runs a side fails':>22}{'noisy':>7}")
    for factor in PLANTS:
        single_fail = pooled_fail = noisy = 0
        for group in groups:
            (base, base_s), (new, new_s) = runs[group[0]], planted(*runs[group[1]], factor)
            single_fail += failed(compare(base, new, THRESHOLD, base_samples=base_s, new_samples=new_s))
            (base, base_s), (new, new_s) = side([runs[i] for i in group[0::2]]), \
                side([runs[i] for i in group[1::2]], factor)
            report = compare(base, new, THRESHOLD, base_samples=base_s, new_samples=new_s)
            pooled_fail += failed(report)
            noisy += bool((report["verdict"] == "noisy").any())
        name = "A/A" if factor == 1 else f"A/B +{factor - 1:.0%}"
        what = "false alarms" if factor == 1 else "caught"
        print(f"{name:<12}{single_fail:>15}/20{pooled_fail:>17}/20{noisy:>9}   ({what})")
    print()


def evaluate(folder: Path, runs: list[tuple[pd.DataFrame, list[dict]]]) -> None:
    chosen = pairs(len(runs))
    first = runs[0][0].iloc[0]
    print(f"== {folder}: {len(runs)} recorded runs: {first['regime']} {first['model']} on {first['device']}, batch "
          f"{first['batch_size']}, input {first['input_len']}, output {first['output_len']}, "
          f"{first['repeats']} repeats, torch {first['torch']}, host {first['host']}")
    print(f"{len(chosen)} disjoint pairs: run 2i as base, run 2i+1 (recorded right after it) as new")
    print(f"tolerance {THRESHOLD:.0%} on {', '.join(DEFAULT_METRICS)}; planted slowdowns scale the new run's timings\n")
    header = f"{'pairs':<12}{'old point gate fails':>22}{'new gate fails':>16}{'new, noisy fails':>18}{'noisy':>7}"
    print(header)
    details = []
    for factor in PLANTS:
        old_fail = new_fail = strict_fail = noisy = 0
        for a, b in chosen:
            (base, base_samples), (new, new_samples) = runs[a], runs[b]
            new, new_samples = planted(new, new_samples, factor)
            point = compare(base, new, THRESHOLD)
            gate = compare(base, new, THRESHOLD, base_samples=base_samples, new_samples=new_samples)
            old_fail += failed(point)
            new_fail += failed(gate)
            strict_fail += failed(gate, fail_on_noisy=True)
            noisy += bool((gate["verdict"] == "noisy").any())
            details.append(f"{factor:.2f} {a:02d}->{b:02d} point " +
                           " ".join(f"{m}={c:+.1%}" for m, c in zip(point["metric"], point["change"])) +
                           " | gate " + " ".join(f"{m}={c:+.1%}[{lo:+.1%},{hi:+.1%}]:{v}" for m, c, lo, hi, v in zip(
                               gate["metric"], gate["change"], gate["ci_low"], gate["ci_high"], gate["verdict"])))
        name = "A/A" if factor == 1 else f"A/B +{factor - 1:.0%}"
        what = "false alarms" if factor == 1 else "caught"
        print(f"{name:<12}{old_fail:>17}/{len(chosen):<4}{new_fail:>11}/{len(chosen):<4}{strict_fail:>13}/"
              f"{len(chosen):<4}{noisy:>7}   ({what})")
    ratios = sorted(float(runs[b][0]["latency_p50_s"].iloc[0] / runs[a][0]["latency_p50_s"].iloc[0])
                    for a, b in chosen)
    print(f"\nA/A spread: new/base latency_p50_s over the {len(chosen)} pairs: min {ratios[0]:.2f}, median "
          f"{ratios[len(ratios) // 2]:.2f}, max {ratios[-1]:.2f}; within 0.95-1.05 in "
          f"{sum(0.95 <= r <= 1.05 for r in ratios)} pairs")
    print("A/A: every fail is a false alarm. A/B: every pass is a miss (misses = pairs - fails).")
    print("noisy: pairs with at least one metric whose interval straddles no change and reaches past 5%.\n")
    print("per pair (change, and the new gate's 95% interval and verdict per metric):")
    print("\n".join(details) + "\n")


if __name__ == "__main__":
    main()
