"""The cost-comparison matrix: each configuration at the largest load that still meets a latency SLO.

Two sources, never mixed in one table. Offline (bench and tune rows): per configuration and workload, the static
batch with the most req/s whose P99 latency is within the SLO. Online (load rows, the article's web service): the
highest offered load whose P99 E2E (and TTFT, if asked) meets the SLO with >= 99% of requests completed and a load
generator that kept to its schedule (not client-bound). From the chosen row: concurrency per GPU, latency,
utilisation, requests/day, unit cost relative to a baseline, $ per 1M tokens, J per token and the GPUs a daily
target needs. DEFINITIONS says each in words; the CLI prints them under the table.
"""
from __future__ import annotations

import json
import math

import pandas as pd

from .errors import QwenoptError
from .schema import MATRIX_COLUMNS
from .stats import RELIABLE_P99_SAMPLES

DAY_S = 86400
MIN_COMPLETED = 0.99  # share of sent requests a level must complete to count as sustained
UNUSABLE_STATUSES = ("client-bound", "error")  # the generator, not the server, set the pace; or nothing ran

DEFINITIONS = [
    ("source", "offline = static batches from `bench`/`tune` (concurrency = batch); online = a served endpoint "
               "under `load` (the article's web service). Tables never mix the two."),
    ("chosen load", "offline: the batch with the most req/s whose P99 latency meets the SLO; online: the highest "
                    "offered load (rate, or users in closed loop) whose P99 E2E (and P99 TTFT with --slo-ttft) "
                    "meets the SLO, with >= 99% of requests completed and status not client-bound."),
    ("conc/GPU", "requests in flight per GPU: online by Little's law, req/s x mean E2E / GPUs (the load row's "
                 "concurrency_mean / GPUs); offline the batch / GPUs. The article's \"concurrent requests per GPU\"."),
    ("req/day", "sustained (completed) req/s x 86,400."),
    ("unit cost", "GPU-seconds per request, (GPUs / req/s), relative to the baseline's."),
    ("$/1M out, $/1M total", "--gpu-hour-usd x GPUs / (output, or input + output, tokens per hour) x 1e6."),
    ("J/tok", "GPU energy per output token, from NVML's energy counter (empty where not measured)."),
    ("GPUs@target", "GPUs to serve --target-requests-per-day: replicas of the configuration (each its TP x PP "
                    "GPUs at its sustained req/s), rounded up, times its GPUs."),
    ("flagged P99", f"a P99 marked * rests on fewer than {RELIABLE_P99_SAMPLES} timings (the `samples` column): "
                    "read it as a maximum."),
]


def _num(value) -> float:
    number = pd.to_numeric(value, errors="coerce")
    return math.nan if pd.isna(number) else float(number)


def _count(value) -> int:
    """A positive whole number from a cell, or 0 where it is empty or not one."""
    number = _num(value)
    return int(number) if number > 0 else 0


def _present(value) -> bool:
    return not pd.isna(value) and str(value).strip() not in ("", "none", "None", "{}")


def config_label(row) -> str:
    """A name for what was run offline: the regime, plus whatever else changes its cost."""
    label = row["regime"]
    if row["regime"] == "vllm-int4" or ":" in str(row["quant"]):  # the int4 format and the kernel that ran
        label += f" ({row['quant']})"
    if row.get("decode_mode") == "static+compile":
        label += " compiled"
    if "+spec-" in str(row.get("decode_mode")):  # speculative decoding, its acceptance ASSUMED where synthetic
        label += " " + str(row["decode_mode"]).split("+", 1)[1]
    if not is_default_attn(row):  # transformers run with --attn
        label += f" {row['attn']}"
    for axis in ("tp", "pp"):
        if int(row[axis]) > 1:
            label += f" {axis}{int(row[axis])}"
    return label


def is_default_attn(row) -> bool:
    """Whether the row ran its regime's own attention kernel (hf-fa2 without flash-attn runs sdpa-flash)."""
    from .attention import FALLBACKS
    from .regimes import REGIMES

    spec = REGIMES.get(str(row["regime"]))
    if spec is None or spec.engine != "hf" or not _present(row.get("attn")):
        return True
    return row["attn"] in (spec.attn, FALLBACKS.get(spec.attn))


def _engine_args_text(text: str) -> str:
    """The engine_args JSON as written, but a null (a setting left to the engine, e.g. tune's prefix caching on
    vLLM's defaults where `load --launch` turns it off) reads "default"."""
    try:
        args = json.loads(text)
    except (TypeError, ValueError):
        return str(text)
    if not isinstance(args, dict):
        return str(text)
    return json.dumps({k: "default" if v is None else v for k, v in args.items()}, sort_keys=True)


def _assumed(text: str) -> str | None:
    from .engines.vllm_spec import assumed_acceptance

    try:
        return assumed_acceptance(json.loads(text))
    except (TypeError, ValueError):
        return None


def online_label(row) -> str:
    """A name for what was served: regime and int4 format, the server and its mode, parallelism, engine knobs."""
    label = str(row["regime"]) if _present(row.get("regime")) else "external"
    if _present(row.get("quant")):
        label += f" ({row['quant']})"
    server = " ".join(str(row[c]) for c in ("server", "serve_mode") if _present(row.get(c)))
    label += f" @{server}" if server else ""
    for axis in ("tp", "pp"):
        if _num(row.get(axis)) > 1:
            label += f" {axis}{int(_num(row[axis]))}"
    if _present(row.get("engine_args")):
        label += f" {_engine_args_text(row['engine_args'])}"
        note = _assumed(row["engine_args"])
        label += f" [{note}]" if note else ""
    if str(row.get("via_gateway")).lower() in ("true", "1"):
        label += f" via gateway ({row['gateway']})" if _present(row.get("gateway")) else " via gateway"
    return label


def workload_label(row) -> str:
    """Offline: input/output lengths; online: the load row's workload name, with its lengths where fixed."""
    lengths = f"in {int(row['input_len'])} / out {int(row['output_len'])}" \
        if not (pd.isna(_num(row.get("input_len"))) or pd.isna(_num(row.get("output_len")))) else ""
    name = str(row["workload"]) if _present(row.get("workload")) else "fixed"
    if name == "fixed" or (name.startswith("in ") and lengths):  # fixed lengths: the lengths say it all
        return lengths or name
    return name  # chat, a file, a mix: lengths vary by request, the row's are a mean that differs level by level


def costs(best, gpus: int, gpu_hour_usd: float) -> dict:
    req_s, out_tok_s, total_tok_s = _num(best.get("req_s")), _num(best.get("output_tok_s")), _num(best.get("total_tok_s"))
    per_hour_usd = gpu_hour_usd * gpus
    return {
        "gpus": gpus, "latency_mean_s": _num(best.get("latency_mean_s")), "latency_p99_s": _num(best.get("latency_p99_s")),
        "ttft_p99_ms": _num(best.get("ttft_p99_ms")), "samples": _num(best.get("samples")),
        "gpu_util_pct": _num(best.get("gpu_util_pct")), "req_s": req_s, "requests_per_day": req_s * DAY_S,
        "output_tok_s": out_tok_s, "total_tok_s": total_tok_s,
        "usd_per_1m_output_tokens": per_hour_usd / (out_tok_s * 3600) * 1e6 if out_tok_s > 0 else math.nan,
        "usd_per_1m_total_tokens": per_hour_usd / (total_tok_s * 3600) * 1e6 if total_tok_s > 0 else math.nan,
        "energy_j_per_tok": _num(best.get("energy_j_per_tok")),
    }


def _offline_row(config: str, group: pd.DataFrame, slo_p99_s: float, gpu_hour_usd: float) -> dict:
    meeting = group[group["latency_p99_s"] <= slo_p99_s]
    if meeting.empty:
        return {"config": config, "meets_slo": False}
    best = meeting.loc[meeting["req_s"].idxmax()]
    gpus = int(best["tp"]) * int(best["pp"])
    return {"config": config, "meets_slo": True, "batch_size": int(best["batch_size"]),
            "concurrency_per_gpu": best["batch_size"] / gpus, **costs(best, gpus, gpu_hour_usd)}


def sustained_levels(levels: pd.DataFrame, slo_p99_s: float, slo_ttft_s: float | None = None) -> pd.DataFrame:
    """The load levels (class "all") a configuration sustains: within the SLO, >= 99% completed, not client-bound."""
    sent = pd.to_numeric(levels["sent"], errors="coerce")
    completed = pd.to_numeric(levels["completed"], errors="coerce")
    keep = ((levels["class"].fillna("all") == "all") & ~levels["status"].isin(UNUSABLE_STATUSES)
            & (sent > 0) & (completed >= MIN_COMPLETED * sent)
            & (pd.to_numeric(levels["latency_p99_s"], errors="coerce") <= slo_p99_s)
            & (pd.to_numeric(levels["req_s"], errors="coerce") > 0))
    if slo_ttft_s is not None:
        keep &= pd.to_numeric(levels["ttft_p99_ms"], errors="coerce") <= slo_ttft_s * 1000
    return levels[keep]


def highest_level(levels: pd.DataFrame) -> pd.Series:
    """The highest offered load: rate in open loop, users in closed loop; across the two, the one with more req/s."""
    picks = []
    for axis in ("rate", "concurrency"):
        offered = pd.to_numeric(levels[axis], errors="coerce")
        if offered.notna().any():
            picks.append(levels.loc[offered.idxmax()])
    return max(picks, key=lambda r: _num(r["req_s"]))


def _online_row(config: str, group: pd.DataFrame, slo_p99_s: float, slo_ttft_s: float | None,
                gpu_hour_usd: float) -> dict:
    ok = sustained_levels(group, slo_p99_s, slo_ttft_s)
    if ok.empty:
        return {"config": config, "meets_slo": False}
    best = highest_level(ok)
    gpus = _count(best.get("gpus")) or (_count(best.get("tp")) or 1) * (_count(best.get("pp")) or 1)
    in_flight = _num(best.get("concurrency_mean"))
    if math.isnan(in_flight):  # Little's law from the row's own figures
        in_flight = _num(best["req_s"]) * _num(best["latency_mean_s"])
    return {"config": config, "meets_slo": True, "rate": _num(best.get("rate")),
            "concurrency": _num(best.get("concurrency")), "concurrency_per_gpu": in_flight / gpus,
            **costs(best, gpus, gpu_hour_usd)}


def _default_baseline(matrix: pd.DataFrame, frame: pd.DataFrame) -> str | None:
    """hf-fp16 where it meets the SLO (served plainly first: the article's original), else the first that does."""
    meeting = matrix[matrix["meets_slo"]]
    if meeting.empty:
        return None
    regimes = frame.drop_duplicates("config").set_index("config")["regime"]
    hf = [c for c in meeting["config"] if regimes.get(c) == "hf-fp16"]
    if hf:
        return sorted(hf, key=lambda c: ("plain" not in c and c != "hf-fp16", c))[0]
    return meeting.iloc[0]["config"]


def _table(frame: pd.DataFrame, source: str, slo_p99_s: float, slo_ttft_s: float | None, gpu_hour_usd: float,
           baseline: str | None, target_requests_per_day: float | None) -> pd.DataFrame:
    rows = []
    for config, group in frame.groupby("config", sort=False):
        rows.append(_online_row(config, group, slo_p99_s, slo_ttft_s, gpu_hour_usd) if source == "online"
                    else _offline_row(config, group, slo_p99_s, gpu_hour_usd))
    first = frame.iloc[0]
    matrix = pd.DataFrame(rows, columns=MATRIX_COLUMNS).astype({"meets_slo": bool})
    matrix["source"], matrix["workload"] = source, first["workload"]
    matrix["input_len"], matrix["output_len"] = _num(first.get("input_len")), _num(first.get("output_len"))
    base = baseline or _default_baseline(matrix, frame)
    base_rows = matrix[(matrix["config"] == base) & matrix["meets_slo"]]
    if not base_rows.empty:
        base_cost = base_rows.iloc[0]["gpus"] / base_rows.iloc[0]["req_s"]
        matrix["relative_unit_cost"] = matrix["gpus"] / matrix["req_s"] / base_cost
    if target_requests_per_day:
        replicas = [math.ceil(target_requests_per_day / d) if d > 0 else math.nan for d in matrix["requests_per_day"]]
        matrix["gpus_for_target"] = [r * g for r, g in zip(replicas, matrix["gpus"])]
    matrix.attrs.update(source=source, workload=first["workload"], baseline=base if not base_rows.empty else None)
    return matrix.sort_values(["relative_unit_cost", "req_s"], ascending=[True, False],
                              na_position="last").reset_index(drop=True)


def _labelled(bench: pd.DataFrame, load: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    parts = []
    if not bench.empty:
        ok = bench[bench["status"] == "ok"].copy()
        if not ok.empty:
            ok["config"] = [config_label(r) for r in ok.to_dict("records")]
            ok["workload"] = [workload_label(r) for r in ok.to_dict("records")]
            parts.append(("offline", ok))
    if not load.empty:
        levels = load.copy()
        levels["config"] = [online_label(r) for r in levels.to_dict("records")]
        levels["workload"] = [workload_label(r) for r in levels.to_dict("records")]
        parts.append(("online", levels))
    return parts


def cost_tables(bench: pd.DataFrame, load: pd.DataFrame, slo_p99_s: float, gpu_hour_usd: float,
                baseline: str | None = None, input_len: int | None = None, output_len: int | None = None,
                slo_ttft_s: float | None = None, target_requests_per_day: float | None = None) -> list[pd.DataFrame]:
    """One matrix per source (offline, online) and workload, each relative to its own baseline."""
    if slo_p99_s <= 0 or gpu_hour_usd < 0 or (slo_ttft_s is not None and slo_ttft_s <= 0):
        raise QwenoptError("--slo-p99 and --slo-ttft must be positive and --gpu-hour-usd not negative")
    if target_requests_per_day is not None and target_requests_per_day <= 0:
        raise QwenoptError("--target-requests-per-day must be positive")
    parts = _labelled(bench, load)
    if not parts:
        raise QwenoptError("no ok bench rows and no load rows to compare")
    everything = sorted({w for _, f in parts for w in f["workload"]})
    tables = []
    for source, frame in parts:
        if input_len is not None:
            frame = frame[pd.to_numeric(frame["input_len"], errors="coerce") == input_len]
        if output_len is not None:
            frame = frame[pd.to_numeric(frame["output_len"], errors="coerce") == output_len]
        for _, group in frame.groupby("workload", sort=True):
            tables.append(_table(group, source, slo_p99_s, slo_ttft_s, gpu_hour_usd, baseline, target_requests_per_day))
    if not tables:
        raise QwenoptError(f"no rows at input {input_len} / output {output_len}; the files hold: {'; '.join(everything)}")
    if not any(t["meets_slo"].any() for t in tables):
        raise QwenoptError(f"no configuration has a cell with P99 latency within {slo_p99_s:g} s")
    if baseline and not any(t.attrs["baseline"] == baseline for t in tables):
        meeting = sorted({c for t in tables for c in t.loc[t["meets_slo"], "config"]})
        raise QwenoptError(f"baseline {baseline!r} has no cell within the SLO here; configurations that do: "
                           f"{', '.join(meeting)}")
    return tables


def cost_matrix(frame: pd.DataFrame, slo_p99_s: float, gpu_hour_usd: float, baseline: str | None = None,
                input_len: int | None = None, output_len: int | None = None, **options) -> pd.DataFrame:
    """The offline matrix of bench rows at one workload (the only one, or the one asked for)."""
    tables = cost_tables(frame, pd.DataFrame(), slo_p99_s, gpu_hour_usd, baseline, input_len, output_len, **options)
    if len(tables) > 1:
        listed = ", ".join(t.attrs["workload"] for t in tables)
        raise QwenoptError(f"the files hold several workloads ({listed}); choose one with --input-len and --output-len")
    return tables[0]


def _fmt(value, digits: int = 2) -> str:
    number = _num(value)
    if math.isnan(number):
        return "-"
    return f"{number:,.0f}" if abs(number) >= 1000 or number.is_integer() else f"{number:,.{digits}f}"


def _load(r: dict) -> str:
    if r["source"] == "offline":
        return f"batch {_fmt(r['batch_size'])}"
    return f"{_fmt(r['rate'])} req/s" if not math.isnan(_num(r["rate"])) else f"{_fmt(r['concurrency'])} users"


DISPLAY = [  # (header, how a matrix row shows it)
    ("config", lambda r: r["config"]),
    ("load", _load),
    ("conc/GPU", lambda r: _fmt(r["concurrency_per_gpu"], 1)),
    ("mean s", lambda r: _fmt(r["latency_mean_s"], 3)),
    ("P99 s", lambda r: _fmt(r["latency_p99_s"], 3) + ("*" if _num(r["samples"]) < RELIABLE_P99_SAMPLES else "")),
    ("TTFT P99 ms", lambda r: _fmt(r["ttft_p99_ms"], 1)),
    ("util %", lambda r: _fmt(r["gpu_util_pct"], 0)),
    ("req/s", lambda r: _fmt(r["req_s"])),
    ("req/day", lambda r: _fmt(r["requests_per_day"])),
    ("unit cost", lambda r: "-" if math.isnan(_num(r["relative_unit_cost"])) else f"{r['relative_unit_cost']:.3g}x"),
    ("$/1M out", lambda r: _fmt(r["usd_per_1m_output_tokens"])),
    ("$/1M total", lambda r: _fmt(r["usd_per_1m_total_tokens"], 3)),
    ("J/tok", lambda r: _fmt(r["energy_j_per_tok"], 3)),
    ("GPUs@target", lambda r: _fmt(r["gpus_for_target"])),
]


def display_rows(matrix: pd.DataFrame, target: bool) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells of one matrix for people (a config that meets no SLO says so)."""
    shown = [(h, f) for h, f in DISPLAY if target or h != "GPUs@target"]
    rows = []
    for r in matrix.to_dict("records"):
        if not r["meets_slo"]:
            rows.append([r["config"], "no load within the SLO"] + ["-"] * (len(shown) - 2))
        else:
            rows.append([f(r) for _, f in shown])
    return [h for h, _ in shown], rows


def title(matrix: pd.DataFrame, slo_p99_s: float, slo_ttft_s: float | None, gpu_hour_usd: float) -> str:
    slo = f"P99 <= {slo_p99_s:g} s" + (f", TTFT P99 <= {slo_ttft_s:g} s" if slo_ttft_s else "")
    base = matrix.attrs.get("baseline")
    workload = matrix.attrs["workload"]
    workload = f"{workload} tokens" if workload.startswith("in ") else f"workload {workload}"
    return (f"{matrix.attrs['source']}, {workload}, {slo}, ${gpu_hour_usd:g} per GPU-hour, "
            + (f"unit cost relative to {base}" if base else "no baseline within the SLO here"))


def to_markdown(tables: list[pd.DataFrame], slo_p99_s: float, slo_ttft_s: float | None, gpu_hour_usd: float,
                target: bool) -> str:
    """Pipe tables a README or a CI comment takes as they are, one per source and workload, then the definitions."""
    from .console import pipe_table

    parts = []
    for matrix in tables:
        headers, rows = display_rows(matrix, target)
        table = pipe_table(headers, [[c.replace("*", "\\*") for c in row] for row in rows])
        parts.append(f"**{title(matrix, slo_p99_s, slo_ttft_s, gpu_hour_usd)}**\n\n{table}")
    parts.append("\n".join(f"- **{term}**: {text}" for term, text in DEFINITIONS))
    return "\n\n".join(parts) + "\n"


def to_csv(tables: list[pd.DataFrame]) -> str:
    """Every table in one CSV of MATRIX_COLUMNS; `source` and `workload` keep them apart."""
    return pd.concat(tables, ignore_index=True)[MATRIX_COLUMNS].to_csv(index=False)
