"""Where speculation stops paying at load: the rows of `tune_h100.sh spec-load` (vllm-int4 with no speculation and
with a random EAGLE-3 head at an ASSUMED acceptance, each on its own start, on one ladder of rates) side by side.

    python3 benchmarks/spec_load_table.py results/h200/tune/v2/spec_load.csv [--slo-s 2]

Per rate offered: each configuration's mean and P99 E2E, TPOT P50, whether the level met the E2E SLO (as tune
judges a level: tune_trial.level_verdict) and its completed req/s, then the speculating configuration's mean E2E
against the one without (below 1: speculation pays at that load) and the rate the arrivals came at. The line under the table names the lowest rate where it stopped paying. Every figure is the rows' own (qwenopt load); the
acceptance is vLLM's synthetic sampler's, assumed, never measured, and the labels say so (matrix.online_label).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qwenopt.console import pipe_table  # noqa: E402
from qwenopt.matrix import online_label  # noqa: E402
from qwenopt.results import read_csv  # noqa: E402
from qwenopt.serving.tune_trial import level_verdict  # noqa: E402

BASE = "no speculation"


def levels(rows: pd.DataFrame) -> pd.DataFrame:
    """The open-loop levels of class all, each named by what was served and its round (seed)."""
    whole = rows[(rows["class"].fillna("all") == "all") & (rows["mode"] == "open")].copy()
    spec = whole["engine_args"].fillna("").str.contains("speculative_config")
    whole["config"] = [online_label(r) if s else BASE for r, s in zip(whole.to_dict("records"), spec)]
    return whole


def names(found: pd.DataFrame) -> dict[str, str]:
    """Short column names: "none", then spec1, spec2, ... for the speculating configs in label order."""
    specs = sorted(set(found["config"]) - {BASE})
    return {BASE: "none", **{config: f"spec{i}" for i, config in enumerate(specs, 1)}}


def table(rows: pd.DataFrame, slo_s: float) -> tuple[pd.DataFrame, dict[str, float | None]]:
    """One row per (seed, rate): every config's figures and each speculating config's mean E2E over the base's; and
    per speculating config the lowest rate where its mean E2E was not below the base's (None: it paid at every rate
    measured beside the base)."""
    found = levels(rows)
    short = names(found)
    out, stops = [], {name: None for config, name in short.items() if config != BASE}
    for (seed, rate), group in found.groupby(["seed", "rate"], sort=True):
        line = {"seed": int(seed), "rate": float(rate)}
        base = group[group["config"] == BASE]
        for config, r in group.groupby("config", sort=False):
            r, name = r.iloc[-1], short[config]
            line.update({f"{name} E2E mean s": r["latency_mean_s"], f"{name} E2E P99 s": r["latency_p99_s"],
                         f"{name} TPOT P50 ms": r["tpot_p50_ms"],
                         f"{name} SLO": "met" if level_verdict(r.to_dict(), {"e2e": slo_s}) is None else "missed",
                         # completed against arrived: well below it, the level ended before its queue settled (on
                         # the H200 at 48 req/s offered, 120 requests: 34.6 completed a second of 43.1 arrived)
                         f"{name} req/s": r["req_s"]})
            if config != BASE and not base.empty:
                ratio = r["latency_mean_s"] / base.iloc[-1]["latency_mean_s"]
                line[f"{name} / none E2E mean"] = ratio
                if ratio >= 1:  # the lowest such rate over every round (seed)
                    stops[name] = min(float(rate), stops[name] or math.inf)
        line["arrived req/s"] = group.iloc[-1].get("arrived_req_s", math.nan)  # one seed: the same arrivals
        out.append(line)
    return pd.DataFrame(out), stops


def markdown(frame: pd.DataFrame) -> str:
    return pipe_table(list(frame.columns), [[f"{v:.3f}" if isinstance(v, float) else v for v in row]
                                            for row in frame.itertuples(index=False)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--slo-s", type=float, default=2.0, help="the E2E P99 limit a level is judged by")
    args = parser.parse_args()
    rows = read_csv(Path(args.csv))
    frame, stops = table(rows, args.slo_s)
    for config, name in names(levels(rows)).items():
        print(f"{name}: {config}")
    print(markdown(frame))
    for name, stop in stops.items():
        print(f"{name} stopped paying (its mean E2E not below none's) from {stop:g} req/s offered" if stop is not None
              else f"{name}'s mean E2E was below none's at every rate measured beside it")


if __name__ == "__main__":
    main()
