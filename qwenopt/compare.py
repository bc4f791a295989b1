"""The CI gate: compare a new result file with a baseline, cell by cell, metric by metric, against the noise.

Cells match on what was run: bench rows on regime, model, weights, quant, parallelism, decode mode, batch and
lengths; load rows on endpoint, server, regime, model, weights, quant, mode, rate, concurrency, lengths and
request class. Where a file holds several runs of a cell, its last row counts. A cell that was ok in the
baseline and is missing or failed in the new file fails the gate.

Verdicts, per (cell, metric):
- `unusable: ...`: a metric that is missing, NaN, infinite, zero or negative on either side cannot be judged
  (a zero baseline would divide by zero, a NaN would compare as anything). It fails the gate, reason shown.
- With raw samples on both sides (the sidecar), the gate bootstraps the metric: it resamples the independent
  timings of each side with replacement (a bench cell's repeats, since every request of an HF static batch shares
  its batch's timing; a load level's ok requests), recomputes the metric from each resample as the row does
  (percentiles over the resampled requests; throughput as the median of tokens / latency per repeat), and takes
  the central `confidence` interval of change = new/base - 1, signed so that negative is worse.
    regression  the whole interval is worse than no change, and it reaches past the threshold: the slowdown is
                real and may be larger than tolerated;
    ok          the worst end of the interval is within the threshold (a real but tolerated change stays ok);
    noisy       the interval straddles no change and reaches past the threshold: the runs are too noisy to tell.
                It passes (so noise alone never fails a build) unless `fail_on_noisy`, and is always shown,
                so a team sees it needs more repeats.
  Why not "the whole interval beyond the threshold": a real slowdown of exactly the threshold would then never be
  flagged, and one a little above it only with very tight samples; requiring significance against zero keeps
  A/A pairs quiet (they rarely exclude zero) while catching a real slowdown of the threshold's size.
- Without samples (old files, fewer than MIN_UNITS repeats, load throughput that has one timing per run) the
  point comparison: regression when the change is beyond the threshold. The `method` column says which.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import QwenoptError
from .gate_samples import bootstrap, pooled_point, text, units
from .schema import ADDED_LATER, IDENTITY, LOAD_IDENTITY

BENCH_KEY = ["regime", "model", "weights", "quant", "attn", "tp", "pp", "decode_mode", "batch_size", "input_len",
             "output_len"]
LOAD_KEY = ["endpoint", "server", "regime", "model", "weights", "quant", "mode", "rate", "concurrency", "input_len",
            "output_len", "class"]
KEY = BENCH_KEY  # the name older callers use
# metric -> +1 when higher is better, -1 when lower is better
METRICS = {
    "output_tok_s": +1, "total_tok_s": +1, "req_s": +1, "goodput_req_s": +1,
    "latency_p50_s": -1, "latency_p90_s": -1, "latency_p99_s": -1, "latency_mean_s": -1,
    "ttft_p50_ms": -1, "ttft_p90_ms": -1, "ttft_p99_ms": -1, "tpot_p50_ms": -1, "tpot_p90_ms": -1, "tpot_p99_ms": -1,
}
DEFAULT_METRICS = ("output_tok_s", "latency_p50_s", "tpot_p50_ms")
# How a metric is recomputed from resampled timings: (sample series, statistic); throughput per repeat, bench only.
SAMPLED = {
    "latency_p50_s": ("e2e", 50), "latency_p90_s": ("e2e", 90), "latency_p99_s": ("e2e", 99),
    "latency_mean_s": ("e2e", "mean"), "ttft_p50_ms": ("ttft", 50), "ttft_p90_ms": ("ttft", 90),
    "ttft_p99_ms": ("ttft", 99), "tpot_p50_ms": ("tpot", 50), "tpot_p90_ms": ("tpot", 90), "tpot_p99_ms": ("tpot", 99),
    "output_tok_s": ("tok_s", 50), "total_tok_s": ("tok_s", 50), "req_s": ("tok_s", 50),
}
ENVIRONMENT = ("gpu_name", "gpu_uuid", "gpu_count", "driver", "cuda", "torch", "transformers", "vllm", "bitsandbytes",
               "gptqmodel", "python")  # the fingerprint columns a result's figures may depend on
RUN = "_run"  # a side read from several files: which file (run) each row came from
MIN_UNITS = 5  # fewer independent timings per side than this and a bootstrap interval means little
RESAMPLES = 2000
CONFIDENCE = 0.95
FAILING = ("regression", "missing", "unusable", "new ")  # verdict prefixes that fail the gate


def parse_threshold(text: str, option: str = "--max-regression") -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise QwenoptError(f"{option} must be a fraction or a percentage, got {text!r}") from None
    if not 0 <= value < 1:
        raise QwenoptError(f"{option} must be between 0% and 100%, got {text!r}")
    return value


def parse_thresholds(items: list[str] | None) -> dict[str, float]:
    """['latency_p99_s=10%', ...] -> {'latency_p99_s': 0.1}."""
    out = {}
    for item in items or []:
        metric, sep, value = item.partition("=")
        if not sep:
            raise QwenoptError(f"--threshold must look like METRIC=PERCENT, e.g. latency_p99_s=10%, got {item!r}")
        if metric not in METRICS:
            raise QwenoptError(f"--threshold names unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        out[metric] = parse_threshold(value, f"--threshold {metric}")
    return out


def environment_differences(base: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    """The fingerprint columns whose values differ between the sides, as "column: base values (base) against new
    values (new)". Not a failure: a gate between two drivers or two cards is often what a team wants, but a change
    it reports may then be the environment's, not the code's (on the H200 two machines of one kind differed by more
    than a tuned configuration's gain: results/h200/tune/v2/aa_fp16)."""
    def values(frame: pd.DataFrame, column: str) -> list[str]:
        return sorted({f"{v:g}" if isinstance(v, float) else str(v) for v in frame[column].dropna()})

    out = []
    for column in ENVIRONMENT:
        if column in base and column in new:
            mine, theirs = values(base, column), values(new, column)
            if mine and theirs and mine != theirs:
                out.append(f"{column}: {', '.join(mine)} (base) against {', '.join(theirs)} (new)")
    return out


def read_any(path: str | Path) -> tuple[str, pd.DataFrame]:
    """A result file and its kind, told by its header: 'bench' (bench/tune rows) or 'load' (online load rows)."""
    from .results import read_load, read_results

    path = Path(path)
    if not path.is_file():
        raise QwenoptError(f"no such result file: {path}")
    try:
        header = set(pd.read_csv(path, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise QwenoptError(f"{path} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    if set(LOAD_IDENTITY) - set(ADDED_LATER) <= header:
        return "load", read_load(path)
    if set(IDENTITY) <= header:
        return "bench", read_results(path)
    raise QwenoptError(f"{path} is neither a bench nor a load result file (its header has neither's columns)")


def read_side(path: str | Path) -> tuple[str, pd.DataFrame, list[dict]]:
    """One side of the gate: a result file, or a folder whose result files are runs of the same cells, pooled
    (each row marked with its file in the RUN column); with the samples of every file."""
    from .results import read_samples

    path = Path(path)
    if not path.is_dir():
        kind, frame = read_any(path)
        return kind, frame, read_samples(path)
    files = sorted(path.glob("*.csv"))
    if not files:
        raise QwenoptError(f"{path} holds no result CSV")
    sides = [(*read_any(p), read_samples(p)) for p in files]
    kinds = {kind for kind, _, _ in sides}
    if len(kinds) > 1:
        raise QwenoptError(f"{path} mixes {' and '.join(sorted(kinds))} result files: one kind a side")
    return (kinds.pop(), *pool_runs([(frame, records) for _, frame, records in sides]))


def pool_runs(runs: list[tuple[pd.DataFrame, list[dict]]]) -> tuple[pd.DataFrame, list[dict]]:
    """Several runs (rows, sample records) as one side: the rows of run i marked i in the RUN column."""
    frame = pd.concat([f.assign(**{RUN: i}) for i, (f, _) in enumerate(runs)], ignore_index=True)
    return frame, [record for _, records in runs for record in records]


def compare(base: pd.DataFrame, new: pd.DataFrame, max_regression: float,
            metrics: tuple[str, ...] = DEFAULT_METRICS, *, kind: str = "bench",
            thresholds: dict[str, float] | None = None, base_samples: list[dict] | None = None,
            new_samples: list[dict] | None = None, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
            seed: int = 0) -> pd.DataFrame:
    """One row per (cell, metric): base and new values, the change (negative is worse), its interval, verdict."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise QwenoptError(f"cannot gate on {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    key = LOAD_KEY if kind == "load" else BENCH_KEY
    base, new = _keyed(base, key), _keyed(new, key)
    base, new = _last_per_run(base, key), _last_per_run(new, key)
    base_ok = base[base["status"] == "ok"]
    if base_ok.empty:
        raise QwenoptError("the baseline file has no ok cell to compare against")
    new_by_cell = {cell: rows for cell, rows in new.groupby(key, sort=False)}  # key is a list: cells are tuples
    rng = np.random.default_rng(seed)
    out = []
    for cell_key, base_runs in base_ok.groupby(key, sort=False):
        cell = base_runs.iloc[-1].to_dict()
        new_runs = new_by_cell.get(cell_key)
        new_ok = latest = None
        if new_runs is not None:
            new_ok = new_runs[new_runs["status"] == "ok"]
            failed_runs = new_runs[new_runs["status"] != "ok"]
            # any failed run of the cell fails it (its status is the verdict); else the side's last run names it
            latest = (failed_runs if len(failed_runs) else new_runs).iloc[-1].to_dict()
        base_units = _runs_units(kind, base_runs, base_samples)
        new_units = _runs_units(kind, new_ok, new_samples)
        for metric in metrics:
            threshold = (thresholds or {}).get(metric, max_regression)
            entry = {**{k: cell[k] for k in key}, "metric": metric, "threshold": threshold,
                     "base": _median(base_runs, metric), "new": None, "change": None, "ci_low": None,
                     "ci_high": None, "method": "-", "runs": f"{len(base_runs)}/{0 if new_ok is None else len(new_ok)}"}
            if latest is None or latest["status"] != "ok":
                entry["verdict"] = "missing" if latest is None else f"new {latest['status']}"
            else:
                entry["new"] = _median(new_ok, metric)
                entry.update(_judge(metric, entry["base"], entry["new"], threshold, base_units, new_units,
                                    confidence, resamples, rng))
            out.append(entry)
    return pd.DataFrame(out)


def _last_per_run(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Within one result file the last row of a cell counts (a rerun replaces a run); with several files a side
    (the RUN column says which file a row came from) each file's last row is one run of the cell, pooled."""
    return frame.drop_duplicates(key + ([RUN] if RUN in frame else []), keep="last")


def _median(runs: pd.DataFrame, metric: str) -> float | None:
    """A side's figure: its one run's, or the median over its runs of the cell (None where the column is absent)."""
    if metric not in runs:
        return None
    values = [_number(v) for v in runs[metric]]
    return float(np.median(values)) if len(values) > 1 else values[0]


def _runs_units(kind: str, runs: pd.DataFrame, records: list[dict] | None) -> list[dict] | None:
    """Each run's units of the cell; None unless every run has its samples (a run without them cannot be pooled)."""
    if not records or runs is None or runs.empty:
        return None
    found = [units(kind, row, records) for row in runs.to_dict("records")]
    return None if any(u is None for u in found) else found


def failed(report: pd.DataFrame, fail_on_noisy: bool = False) -> bool:
    return bool(failing(report, fail_on_noisy).any())


def failing(report: pd.DataFrame, fail_on_noisy: bool = False) -> pd.Series:
    """Which checks fail the gate."""
    prefixes = FAILING + (("noisy",) if fail_on_noisy else ())
    return report["verdict"].map(lambda v: v.startswith(prefixes))


def _judge(metric, base, new, threshold, base_units, new_units, confidence, resamples, rng) -> dict:
    for side, value in (("base", base), ("new", new)):
        problem = _unusable(value)
        if problem:
            return {"verdict": f"unusable: {side} {problem}"}
    direction = METRICS[metric]
    series = SAMPLED.get(metric)
    reason = _no_bootstrap_reason(series, base_units, new_units)
    if reason:
        change = direction * (new - base) / base
        return {"change": change, "method": f"point ({reason})",
                "verdict": "regression" if change < -threshold else "ok"}
    name, statistic = series
    base_runs, new_runs = [u[name] for u in base_units], [u[name] for u in new_units]
    boot_base = bootstrap(base_runs, statistic, resamples, rng)
    boot_new = bootstrap(new_runs, statistic, resamples, rng)
    point_base, point_new = pooled_point(base_runs, statistic), pooled_point(new_runs, statistic)
    for side, value in (("base", point_base), ("new", point_new)):
        problem = _unusable(value)
        if problem:
            return {"verdict": f"unusable: {side} samples give {problem.removeprefix('is ')}"}
    with np.errstate(divide="ignore", invalid="ignore"):
        changes = direction * (boot_new / boot_base - 1)
    tail = (1 - confidence) / 2
    low, high = (float(v) for v in np.nanquantile(changes, [tail, 1 - tail]))
    if high < 0 and low < -threshold:
        verdict = "regression"
    elif low >= -threshold:
        verdict = "ok"
    else:
        verdict = "noisy"
    count = lambda runs: str(sum(len(r) for r in runs)) + (f" in {len(runs)} runs" if len(runs) > 1 else "")  # noqa: E731
    return {"change": direction * (point_new / point_base - 1), "ci_low": low, "ci_high": high,
            "method": f"bootstrap {count(base_runs)}/{count(new_runs)}", "verdict": verdict}


def _no_bootstrap_reason(series, base_units, new_units) -> str | None:
    if series is None:
        return "metric not resampled"
    if base_units is None or new_units is None:
        return "no samples"
    name = series[0]
    if any(name not in u for u in base_units + new_units):
        return "one timing per run"
    fewest = min(sum(len(u[name]) for u in base_units), sum(len(u[name]) for u in new_units))
    if fewest < MIN_UNITS:
        return f"{fewest} timings"
    return None


def _unusable(value) -> str | None:
    if value is None:
        return "is missing"
    if math.isnan(value):
        return "is NaN"
    if math.isinf(value):
        return "is infinite"
    if value == 0:
        return "is 0"
    if value < 0:
        return "is negative"
    return None


def _number(value) -> float | None:
    """A cell value as a float, None where there is none (a missing column or an empty cell read as NaN stays NaN)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _keyed(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for column in key:
        frame[column] = [text(v) for v in frame[column]] if column in frame else ""
    return frame


def cell_label(entry: dict) -> str:
    """A short name for a compared cell, bench or load."""
    if "endpoint" in entry:
        level = f"rate {entry['rate']}" if entry.get("rate") else f"concurrency {entry['concurrency']}"
        return (f"{entry['regime'] or entry['server'] or entry['endpoint']} {level} in {entry['input_len']} "
                f"out {entry['output_len']} {entry['class']}")
    quant = "" if entry["quant"] in ("", "none") else f" {entry['quant']}"
    return f"{entry['regime']}{quant} bs {entry['batch_size']} in {entry['input_len']} out {entry['output_len']}"


def formatted(report: pd.DataFrame) -> list[dict]:
    """The report as display strings: cell, metric, base, new, change, interval, threshold, method, verdict."""
    def num(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.1%}"

    rows = []
    for r in report.to_dict("records"):
        interval = "-" if pct(r["ci_low"]) == "-" else f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]"
        rows.append({"cell": cell_label(r), "metric": r["metric"], "base": num(r["base"]), "new": num(r["new"]),
                     "change": pct(r["change"]), "interval": interval, "threshold": f"{r['threshold']:.1%}",
                     "method": r["method"], "verdict": r["verdict"]})
    return rows


ENVIRONMENT_NOTE = "the sides' environments differ, so a change may be theirs, not the code's"


def markdown(report: pd.DataFrame, title: str, summary: str, differences: list[str] = ()) -> str:
    """A Markdown table for a CI comment."""
    from .console import pipe_table

    rows = formatted(report)
    names = list(rows[0]) if rows else []
    cells = [[*(r[n] for n in names[:-1]), r["verdict"] if r["verdict"] == "ok" else f"**{r['verdict']}**"]
             for r in rows]
    note = [f"Note: {ENVIRONMENT_NOTE}:", "", *(f"- {d}" for d in differences), ""] if differences else []
    return "\n".join([f"### {title}", "", pipe_table(names, cells), "", summary, "", *note])


def as_json(report: pd.DataFrame, passed: bool, summary: str, differences: list[str] = ()) -> str:
    """Every check with its numbers (NaN as null), and the overall result, for machines."""
    import json

    checks = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
              for r in report.astype(object).to_dict("records")]
    return json.dumps({"passed": passed, "summary": summary, "environment_differences": list(differences),
                       "checks": checks}, indent=1)
