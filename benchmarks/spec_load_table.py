"""Where speculation stops paying at load: the rows of `tune_h100.sh spec-load` (vllm-int4 with no speculation and
with a random EAGLE-3 head at an ASSUMED acceptance, each on its own start, on one ladder of rates) side by side.

    python3 benchmarks/spec_load_table.py results/h200/tune/v2/spec_load_hi.csv [more.csv ...] [--slo-s 2]

Per card and rate offered: each configuration's mean E2E (averaged over its starts, with their lowest and highest
where it ran more than once: one configuration's mean E2E moved by up to 0.5 s between starts on one H200), P99 E2E
and TPOT P50 (averaged), how many of its starts met the E2E SLO (as tune judges a level: tune_trial.level_verdict),
its completed req/s, then each speculating configuration's mean E2E over the one without (below 1: speculation pays
at that load) and the rate the arrivals came at. Cards (gpu_uuid) are never averaged together. The line under the
table names the lowest rate where a head stopped paying. Every figure is the rows' own (qwenopt load); the
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
    """The open-loop levels of class all, each named by what was served, its card and its start (run_id)."""
    whole = rows[(rows["class"].fillna("all") == "all") & (rows["mode"] == "open")].copy()
    spec = whole["engine_args"].fillna("").str.contains("speculative_config")
    whole["config"] = [online_label(r) if s else BASE for r, s in zip(whole.to_dict("records"), spec)]
    card = whole["gpu_uuid"] if "gpu_uuid" in whole else pd.Series("", index=whole.index)
    whole["card"] = card.fillna("").astype(str).str.split(",").str[0].str[-8:]  # a UUID's tail names it
    return whole


def names(found: pd.DataFrame) -> dict[str, str]:
    """Short column names: "none", then spec1, spec2, ... for the speculating configs in label order."""
    specs = sorted(set(found["config"]) - {BASE})
    return {BASE: "none", **{config: f"spec{i}" for i, config in enumerate(specs, 1)}}


def figures(starts: pd.DataFrame, name: str, slo_s: float) -> dict:
    """One configuration's figures at one rate over its starts (one row each)."""
    means = starts["latency_mean_s"]
    met = sum(level_verdict(r, {"e2e": slo_s}) is None for r in starts.to_dict("records"))
    line = {f"{name} E2E mean s": means.mean()}
    if len(starts) > 1:
        line[f"{name} E2E mean range s"] = f"{means.min():.3f}-{means.max():.3f}"
    line.update({f"{name} E2E P99 s": starts["latency_p99_s"].mean(), f"{name} TPOT P50 ms": starts["tpot_p50_ms"].mean(),
                 f"{name} SLO": ("met" if met else "missed") if len(starts) == 1 else f"{met}/{len(starts)} met",
                 # completed against arrived: well below it, the level ended before its queue settled (on the H200
                 # at 48 req/s offered, 120 requests: 34.6 completed a second of 43.1 arrived)
                 f"{name} req/s": starts["req_s"].mean()})
    return line


def table(rows: pd.DataFrame, slo_s: float) -> tuple[pd.DataFrame, dict[str, float | None]]:
    """One row per (card, seed, rate): every config's figures over its starts and each speculating config's mean
    E2E over the base's; and per speculating config the lowest rate where that ratio was not below 1 (None: it paid
    at every rate measured beside the base)."""
    found = levels(rows)
    short = names(found)
    several_cards = found["card"].nunique() > 1
    out, stops = [], {name: None for config, name in short.items() if config != BASE}
    for (card, seed, rate), group in found.groupby(["card", "seed", "rate"], sort=True):
        line = {"card": card} if several_cards else {}
        line.update({"seed": int(seed), "rate": float(rate)})
        # each start's level once (its last row), per configuration: a file's rows may share one run_id
        group = group.drop_duplicates(["config", "run_id"], keep="last")
        base = group[group["config"] == BASE]
        for config, starts in group.groupby("config", sort=False):
            name = short[config]
            line.update(figures(starts, name, slo_s))
            if config != BASE and not base.empty:
                ratio = starts["latency_mean_s"].mean() / base["latency_mean_s"].mean()
                line[f"{name} / none E2E mean"] = ratio
                if ratio >= 1:  # the lowest such rate over every card and round (seed)
                    stops[name] = min(float(rate), stops[name] or math.inf)
        line["arrived req/s"] = group.iloc[-1].get("arrived_req_s", math.nan)  # one seed: the same arrivals
        out.append(line)
    return pd.DataFrame(out), stops


def markdown(frame: pd.DataFrame) -> str:
    return pipe_table(list(frame.columns), [["" if isinstance(v, float) and math.isnan(v) else
                                             f"{v:.3f}" if isinstance(v, float) else v for v in row]
                                            for row in frame.itertuples(index=False)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="spec-load result files (their rows are read together)")
    parser.add_argument("--slo-s", type=float, default=2.0, help="the E2E P99 limit a level is judged by")
    args = parser.parse_args()
    rows = pd.concat([read_csv(Path(path)) for path in args.csv], ignore_index=True)
    frame, stops = table(rows, args.slo_s)
    found = levels(rows)
    for config, name in names(found).items():
        print(f"{name}: {config} ({found[found['config'] == config]['run_id'].nunique()} start(s))")
    print(markdown(frame))
    for name, stop in stops.items():
        print(f"{name} stopped paying (its mean E2E not below none's) from {stop:g} req/s offered" if stop is not None
              else f"{name}'s mean E2E was below none's at every rate measured beside it")


if __name__ == "__main__":
    main()
