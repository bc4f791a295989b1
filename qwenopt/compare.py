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
from .schema import IDENTITY, LOAD_IDENTITY

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
    if set(LOAD_IDENTITY) <= header:
        return "load", read_load(path)
    if set(IDENTITY) <= header:
        return "bench", read_results(path)
    raise QwenoptError(f"{path} is neither a bench nor a load result file (its header has neither's columns)")


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
    base_ok = base[base["status"] == "ok"].drop_duplicates(key, keep="last")
    if base_ok.empty:
        raise QwenoptError("the baseline file has no ok cell to compare against")
    latest = new.drop_duplicates(key, keep="last").set_index(key)
    rng = np.random.default_rng(seed)
    out = []
    for cell in base_ok.to_dict("records"):
        cell_key = tuple(cell[k] for k in key)
        found = latest.loc[cell_key].to_dict() if cell_key in latest.index else None
        if found is not None:
            found.update(zip(key, cell_key))
        base_units = _units(kind, cell, base_samples) if base_samples else None
        new_units = _units(kind, found, new_samples) if new_samples and found is not None else None
        for metric in metrics:
            threshold = (thresholds or {}).get(metric, max_regression)
            entry = {**{k: cell[k] for k in key}, "metric": metric, "threshold": threshold,
                     "base": _number(cell.get(metric)), "new": None, "change": None, "ci_low": None,
                     "ci_high": None, "method": "-"}
            if found is None or found["status"] != "ok":
                entry["verdict"] = "missing" if found is None else f"new {found['status']}"
            else:
                entry["new"] = _number(found.get(metric))
                entry.update(_judge(metric, entry["base"], entry["new"], threshold, base_units, new_units,
                                    confidence, resamples, rng))
            out.append(entry)
    return pd.DataFrame(out)


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
    boot_base = _bootstrap(base_units[name], statistic, resamples, rng)
    boot_new = _bootstrap(new_units[name], statistic, resamples, rng)
    point_base = _statistic(base_units[name][None], statistic)[0]
    point_new = _statistic(new_units[name][None], statistic)[0]
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
    return {"change": direction * (point_new / point_base - 1), "ci_low": low, "ci_high": high,
            "method": f"bootstrap {len(base_units[name])}/{len(new_units[name])}", "verdict": verdict}


def _no_bootstrap_reason(series, base_units, new_units) -> str | None:
    if series is None:
        return "metric not resampled"
    if base_units is None or new_units is None:
        return "no samples"
    name = series[0]
    if name not in base_units or name not in new_units:
        return "one timing per run"
    fewest = min(len(base_units[name]), len(new_units[name]))
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


def _bootstrap(units: np.ndarray, statistic, resamples: int, rng) -> np.ndarray:
    """The statistic of `resamples` resamples (with replacement) of the rows of units (one row per timing)."""
    picks = rng.integers(0, len(units), size=(resamples, len(units)))
    return _statistic(units[picks], statistic)


def _statistic(resampled: np.ndarray, statistic) -> np.ndarray:
    flat = resampled.reshape(len(resampled), -1)
    if statistic == "mean":
        return flat.mean(axis=1)
    return np.percentile(flat, statistic, axis=1)


def _units(kind: str, row: dict, records: list[dict]) -> dict[str, np.ndarray] | None:
    """The row's independent timings from its sidecar: arrays of shape (units, values per unit) per series."""
    return _bench_units(row, records) if kind == "bench" else _load_units(row, records)


def _bench_units(row: dict, records: list[dict]) -> dict[str, np.ndarray] | None:
    """One unit per repeat: a static batch's requests share one timing, so the repeat is what was measured."""
    match = [r for r in records if r.get("status") == "ok" and all(
        _same(r.get(k), row.get(k)) for k in ("run_id", "regime", "batch_size", "input_len", "output_len"))]
    samples = match[-1].get("samples") if match else None
    batch = int(float(row["batch_size"]))
    if not samples or len(samples) % batch:
        return None
    output_len = int(float(row["output_len"]))
    e2e = np.array([s["e2e_s"] for s in samples], dtype=float).reshape(-1, batch)
    ttft = np.array([s["ttft_s"] for s in samples], dtype=float).reshape(-1, batch)
    tokens = np.array([s["output_tokens"] for s in samples], dtype=float).reshape(-1, batch)
    units = {"e2e": e2e, "ttft": ttft, "tok_s": (tokens.sum(axis=1) / e2e.max(axis=1))[:, None]}
    if output_len > 1:
        units["tpot"] = (e2e - ttft) / (output_len - 1)
    return units


def _load_units(row: dict, records: list[dict]) -> dict[str, np.ndarray] | None:
    """One unit per ok request of the level (and class); throughput has one timing per run, so it stays a point.

    A load sidecar record belongs to a row by run_id (and level, where both have one) and holds its requests
    under `requests` (or `samples`), each a RequestRecord as JSON (outcome, cls, warmup, ttft_s, e2e_s, tokens).
    """
    match = [r for r in records if _same(r.get("run_id"), row.get("run_id"))
             and ("level" not in r or row.get("level") is None or _same(r["level"], row["level"]))]
    if not match:
        return None
    requests = match[-1].get("requests", match[-1].get("samples")) or []
    cls = row.get("class")
    ok = [q for q in requests if q.get("outcome", "ok") == "ok" and not q.get("warmup")
          and (cls in (None, "", "all") or q.get("cls", q.get("class")) == cls)
          and q.get("e2e_s") is not None and q.get("ttft_s") is not None]
    if not ok:
        return None
    e2e = np.array([q["e2e_s"] for q in ok], dtype=float)[:, None]
    ttft = np.array([q["ttft_s"] for q in ok], dtype=float)[:, None]
    tokens = np.array([q.get("output_tokens") or 0 for q in ok], dtype=float)[:, None]
    units = {"e2e": e2e, "ttft": ttft}
    if (tokens > 1).all():
        units["tpot"] = (e2e - ttft) / (tokens - 1)
    return units


def _same(a, b) -> bool:
    return _text(a) == _text(b)


def _text(value) -> str:
    """Key values as text, so a missing value matches a missing value and 8 matches 8.0 and '8'."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return str(int(number)) if number.is_integer() else value
    return str(value)


def _keyed(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for column in key:
        frame[column] = [_text(v) for v in frame[column]] if column in frame else ""
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


def markdown(report: pd.DataFrame, title: str, summary: str) -> str:
    """A Markdown table for a CI comment."""
    rows = formatted(report)
    names = list(rows[0]) if rows else []
    lines = [f"### {title}", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for r in rows:
        verdict = r["verdict"] if r["verdict"] == "ok" else f"**{r['verdict']}**"
        lines.append("| " + " | ".join([*(str(r[n]).replace("|", "\\|") for n in names[:-1]), verdict]) + " |")
    return "\n".join(lines + ["", summary, ""])


def as_json(report: pd.DataFrame, passed: bool, summary: str) -> str:
    """Every check with its numbers (NaN as null), and the overall result, for machines."""
    import json

    checks = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
              for r in report.astype(object).to_dict("records")]
    return json.dumps({"passed": passed, "summary": summary, "checks": checks}, indent=1)
