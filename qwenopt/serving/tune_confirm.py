"""`qwenopt confirm`: re-measure a `tune --launch` search's winner (or any trial) against vLLM's defaults on fresh
starts, with the same arrivals.

Why: a trial's goodput is the highest of a few short levels whose P99 met the SLO, and a short level's P99 rests on
its worst one or two requests. On the H200 (results/h200/tune) the int4 search's winner met E2E P99 0.8 s at 23.5
req/s in an 8 s level, and missed it by 1.4 s in a 15 s level at the same seed: the longer window held a cluster of
arrivals the short one ended before. So here the defaults and the trial are started again and each is measured on a
ladder of rates (by default five from 60% of the lower best level to the higher, and one step above; give rates
when one folder is to hold several trials, so that all share one ladder), every level `requests` measured requests
long after `warmup` unmeasured ones, with the round's seed: the same arrivals, a paired comparison. Each configuration's goodput in a
round is the highest rate up to which every level met the SLO, judged as tune judges a level; a trial is confirmed
when it beats the defaults in every round that measured both. Each level is a `qwenopt load` row in DIR/confirm.csv
(its engine_args say which configuration, its seed which round); a start is one `vllm serve`.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ..console import pipe_table
from ..errors import QwenoptError
from ..results import read_csv, read_jsonl
from .metrics import parse_slo, tail_text
from .tune_online import read_trials, trials_path, winner
from .tune_trial import cards, level_verdict, offered_rate

CONFIGS = ("defaults", "trial")
DEFAULTS = "defaults (trial 0)"
NOT_CONFIRMED = "not confirmed"  # the verdict's word for a trial that lost a round; `qwenopt confirm` exits 1 on it
AGAIN = "defaults, start "  # + k: the defaults' k-th start in one round, an A/A run (`--trial 0`)


def _study(out: Path):
    """The latest study in OUT.trials.jsonl: its trials and its load rows (class all)."""
    records = read_jsonl(trials_path(out))
    if not records:
        raise QwenoptError(f"{trials_path(out)}: no trials of a `tune --launch` search")
    study = records[-1]["study"]
    results, _ = read_trials(out, study)
    rows = read_csv(Path(out))
    return results, rows[(rows["study"] == study) & (rows["class"] == "all")]


def pick(out: Path, trial: int | None = None) -> tuple[dict, dict]:
    """The latest study's trial 0 and its winner (or trial `trial`), each as the load row of its best level."""
    results, rows = _study(out)
    best = winner(results) if trial is None else next((r for r in results if r.trial == trial), None)
    if trial is not None and (best is None or best.status != "ok"):
        raise QwenoptError(f"trial {trial} is not a trial of the latest search that met the SLO")
    default = next((r for r in results if r.trial == 0 and r.status == "ok"), None)
    if best is None or default is None:
        raise QwenoptError("no winner, or vLLM's defaults met the SLO at no level: nothing to confirm")

    def best_level(result) -> dict:
        mine = rows[(rows["trial"] == result.trial) & (rows["trial_status"] == "ok")]
        return mine.loc[(mine["req_s"] - result.goodput_req_s).abs().idxmin()].to_dict()

    return best_level(default), best_level(best)


def labels_of(out: Path) -> dict[str, str]:
    """Every trial's engine_args -> its name in the tables ("defaults (trial 0)", "trial 5"): one confirm folder holds
    the defaults once a round and any trials re-measured against them."""
    _, rows = _study(out)
    names = {}
    for trial, args in rows[["trial", "engine_args"]].drop_duplicates().itertuples(index=False):
        names.setdefault(args, DEFAULTS if trial == 0 else f"trial {trial}")
    return names


def ladder(low: float, high: float, steps: int = 5, floor: float = 0.6, above: int = 1) -> list[float]:
    """`steps` rates evenly spaced from `floor` x the lower best level to the higher one (both levels' windows were
    short, so the lower may itself be above what the defaults sustain), then `above` more at the same spacing: the
    winner held the higher in its search, and a ladder that stops there can only say "at least" of its gain (on the
    H200 fp16's winner met the top rung, 44 req/s, in both rounds: results/h200/tune/v2/confirm_fp16)."""
    start, stop = floor * min(low, high), max(low, high)
    if steps < 2:
        return [round(stop, 3)]
    step = (stop - start) / (steps - 1)
    return [round(start + step * i, 3) for i in range(steps + above)]


def load_command(level: dict, rates: list[float], requests: int, warmup: int, out: Path, label: str,
                 seed: int) -> list[str]:
    quant = ["--quant", str(level["quant"])] if level["regime"] == "vllm-int4" and pd.notna(level.get("quant")) else []
    return [sys.executable, "-m", "qwenopt", "load", "--launch", level["regime"], *quant, "--model", level["model"],
            "--weights", level["weights"], "--input-len", str(int(level["input_len"])), "--output-len",
            str(int(level["output_len"])), "--rate", ",".join(f"{r:.3f}" for r in rates), "--num-requests",
            str(requests), "--warmup", str(warmup), "--slo", str(level["slo"]), "--seed", str(seed),
            "--engine-args", level["engine_args"] or "{}", "--server-log", str(out / f"serve_{label}.log"),
            "--out", str(out / "confirm.csv")]


def run_child(argv: list[str], grace_s: float = 30.0) -> int:
    """Run one `qwenopt load`; on Ctrl-C let it stop its own server. Ctrl-C (and `timeout -s INT`) signal the whole
    process group, so the child is stopping already: wait for it (SIGINT it only if it goes on past `grace_s`).
    subprocess.run would SIGKILL it instead, leaving its `vllm serve` holding the GPU for the next call."""
    child = subprocess.Popen(argv)
    try:
        return child.wait()
    except KeyboardInterrupt:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
            child.wait()
        raise


def _judged(out: Path, labels: dict[str, str]) -> pd.DataFrame:
    rows = read_csv(out / "confirm.csv")
    rows = rows[rows["class"] == "all"].copy()
    rows["configuration"] = [labels.get(args, args) for args in rows["engine_args"]]
    for seed, group in rows[rows["configuration"] == DEFAULTS].groupby("seed"):
        for k, run in enumerate(list(dict.fromkeys(group["run_id"]))[1:], start=2):  # in the file's order
            rows.loc[(rows["seed"] == seed) & (rows["run_id"] == run), "configuration"] = f"{AGAIN}{k}"
    rows["verdict"] = [level_verdict(r.to_dict(), parse_slo(r["slo"])) or "met" for _, r in rows.iterrows()]
    return rows


def goodputs(rows: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and round (seed): the highest rate up to which every level met the SLO (0: the lowest
    missed), and the measured req/s of that level."""
    out = []
    for (name, seed), levels in rows.groupby(["configuration", "seed"], sort=False):
        levels = levels.sort_values("rate")
        best_rate, best_req_s = 0.0, 0.0
        for _, level in levels.iterrows():
            if level["verdict"] != "met":
                break
            best_rate, best_req_s = float(level["rate"]), float(level["req_s"])
        out.append({"configuration": name, "seed": int(seed), "levels": len(levels), "goodput_rate": best_rate,
                    "goodput_req_s": best_req_s, "lowest_rate": float(levels["rate"].min()),
                    "highest_rate": float(levels["rate"].max())})
    return pd.DataFrame(out)


def p99_gaps(rows: pd.DataFrame, name: str, base: str = DEFAULTS) -> pd.Series:
    """`name`'s P99 E2E minus `base`'s at every rung (seed, rate) both measured, in seconds.

    Why beside the goodput: near the SLO a P99 curve can be nearly flat (on the H200 the fp16 defaults read 1.85-2.31 s
    over 32-44 req/s), so the highest rate met moves by whole rungs on a few requests; the gap at every rung uses
    every level, and an A/A run's gaps say how large a gap a server start alone makes."""
    keys = ["seed", "rate"]
    mine = rows[rows["configuration"] == name].groupby(keys)["latency_p99_s"].mean()
    theirs = rows[rows["configuration"] == base].groupby(keys)["latency_p99_s"].mean()
    return (mine - theirs).dropna()


def gap_text(gaps: pd.Series, name: str, base: str) -> str:
    if gaps.empty:
        return f"P99 E2E, {name} minus {base}: no rung measured by both"
    return (f"P99 E2E at the same rung and round, {name} minus {base}: median {gaps.median():+.3f} s over "
            f"{len(gaps)} rung(s), lower at {int((gaps < 0).sum())}, from {gaps.min():+.3f} to {gaps.max():+.3f} s")


def table(out: Path, labels: dict[str, str]) -> str:
    rows = _judged(out, labels)
    headers = ["configuration", "seed", "start", "offered req/s", "sent", "arrived req/s", "req/s", "P99 E2E s",
               "P99 TTFT ms", "TPOT P50 ms", "prefix cache hit %", "slowest 1%: TTFT / decode / stalls s",
               "SLO (as tune judges a level)"]
    cells = []
    for _, r in rows.sort_values(["seed", "configuration", "rate"], kind="stable", na_position="first").iterrows():
        arrived = r.get("arrived_req_s")  # rows written before the column existed have none
        hit = r.get("prefix_cache_hit_rate")  # the share of prompt tokens served from cache (vLLM's /metrics)
        graphs = r.get("compile_cache")  # whether the start compiled its graphs or loaded them (launcher.py)
        start = r["run_id"] if pd.isna(graphs) or not graphs else f"{r['run_id']} (graphs {graphs})"
        cells.append([r["configuration"], r["seed"], start, f"{r['rate']:.2f}", r["sent"],
                      "-" if pd.isna(arrived) else f"{arrived:.2f}", f"{r['req_s']:.2f}", f"{r['latency_p99_s']:.3f}",
                      f"{r['ttft_p99_ms']:.0f}", f"{r['tpot_p50_ms']:.2f}", "-" if pd.isna(hit) else f"{100 * hit:.0f}",
                      tail_text(r) or "-", r["verdict"]])
    return pipe_table(headers, cells)


def verdict(out: Path, labels: dict[str, str]) -> str:
    """The goodput of each configuration in each round, and whether each trial beat the defaults in every round
    where both were measured."""
    rows = _judged(out, labels)
    found = goodputs(rows)
    lines = [pipe_table(["configuration", "seed", "levels", "goodput (highest rate, every lower one met too)",
                         "its req/s"],
                        [[g["configuration"], g["seed"], g["levels"], f"{g['goodput_rate']:.2f}",
                          f"{g['goodput_req_s']:.2f}"] for _, g in found.iterrows()])]
    by = {(g["configuration"], g["seed"]): g["goodput_rate"] for _, g in found.iterrows()}
    on = cards(rows, ["configuration", "seed"])
    # 0 means the ladder's lowest rate missed already: say "<lowest", not 0 req/s and -100%; the top rung met says
    # "top+": the limit lies at or above the ladder's top (on the H200 fp16's winner met 44, the top, in two rounds)
    shown = {(g["configuration"], g["seed"]): f"<{g['lowest_rate']:g}" if not g["goodput_rate"]
             else f"{g['goodput_rate']:g}+" if g["goodput_rate"] == g["highest_rate"] else f"{g['goodput_rate']:g}"
             for _, g in found.iterrows()}
    lines.append("")
    for name in dict.fromkeys(n for n, _ in by if n != DEFAULTS):
        paired = sorted(seed for n, seed in by if n == name and (DEFAULTS, seed) in by)
        apart = [seed for seed in paired if None not in (on.get((name, seed)), on.get((DEFAULTS, seed)))
                 and on[(name, seed)] != on[(DEFAULTS, seed)]]
        paired = [seed for seed in paired if seed not in apart]
        if apart:
            lines.append(f"{name}: round(s) {', '.join(map(str, apart))} left out: it and the defaults ran on "
                         f"different cards (gpu_uuid), which can differ by more than a configuration does")
        if not paired:
            lines.append(f"verdict: {name}: no round holds it and the defaults{' on one card' if apart else ''} yet")
            continue
        pairs = [(seed, by[(name, seed)], by[(DEFAULTS, seed)]) for seed in paired]
        detail = "; ".join(f"seed {seed}: {shown[(name, seed)]} against {shown[(DEFAULTS, seed)]} req/s"
                           + (f" ({'at least ' if shown[(name, seed)].endswith('+') else ''}{mine / base - 1:+.0%})"
                              if base and mine else "") for seed, mine, base in pairs)
        again = name.startswith(AGAIN)  # the same configuration twice: the spread is what a start alone moves
        gaps = gap_text(p99_gaps(rows[rows["seed"].isin(paired)], name), name,
                        "the defaults' first start" if again else "the defaults")
        if again:
            lines.append(f"A/A: {name} of vLLM's defaults against the first, the same arrivals: {detail}; a trial's "
                         f"gain within this spread is the server start's, not its configuration's. {gaps}")
            continue
        word = "confirmed" if all(mine > base for _, mine, base in pairs) else NOT_CONFIRMED
        lines.append(f"verdict: {name}'s goodput gain over the defaults is {word} in {len(pairs)} round(s): {detail} "
                     f"(at this ladder's resolution). {gaps}")
    if lines[-1] == "":
        lines.append("verdict: no trial measured yet besides the defaults")
    return "\n".join(lines)
