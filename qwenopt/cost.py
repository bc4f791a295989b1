"""The cost-comparison matrix: each configuration at the largest load that still meets a P99 latency SLO.

Per configuration (regime, int4 format, parallelism, decode mode) and one workload (input, output length):
the cell with the highest req/s whose P99 latency is within the SLO. From it: requests per GPU (batch / GPUs),
latency, GPU utilisation, requests/day (req/s x 86,400), unit cost relative to the baseline
((GPUs / req/s) / the baseline's) and $ per 1M output tokens (GPU-hour price x GPUs / output tokens per hour).
"""
from __future__ import annotations

import math

import pandas as pd

from .errors import QwenoptError
from .schema import MATRIX_COLUMNS



def config_label(row) -> str:
    """A name for what was run: the regime, plus whatever else changes its cost."""
    label = row["regime"]
    if row["regime"] == "vllm-int4" or ":" in str(row["quant"]):  # the int4 format and the kernel that ran
        label += f" ({row['quant']})"
    if row.get("decode_mode") == "static+compile":
        label += " compiled"
    for axis in ("tp", "pp"):
        if int(row[axis]) > 1:
            label += f" {axis}{int(row[axis])}"
    return label


def pick_workload(frame: pd.DataFrame, input_len: int | None, output_len: int | None) -> tuple[int, int]:
    """The (input, output) lengths to compare at: as asked, or the only one the files share."""
    if input_len is not None:
        frame = frame[frame["input_len"] == input_len]
    if output_len is not None:
        frame = frame[frame["output_len"] == output_len]
    pairs = sorted({(int(i), int(o)) for i, o in zip(frame["input_len"], frame["output_len"])})
    if len(pairs) == 1:
        return pairs[0]
    if not pairs:
        raise QwenoptError(f"no ok rows at input {input_len} / output {output_len}")
    listed = ", ".join(f"{i}/{o}" for i, o in pairs)
    raise QwenoptError(f"the files hold several workloads (input/output: {listed}); choose one with --input-len and --output-len")


def cost_matrix(frame: pd.DataFrame, slo_p99_s: float, gpu_hour_usd: float, baseline: str | None = None,
                input_len: int | None = None, output_len: int | None = None) -> pd.DataFrame:
    if slo_p99_s <= 0 or gpu_hour_usd < 0:
        raise QwenoptError("--slo-p99 must be positive and --gpu-hour-usd not negative")
    ok = frame[frame["status"] == "ok"].copy()
    if ok.empty:
        raise QwenoptError("no ok rows to compare")
    workload = pick_workload(ok, input_len, output_len)
    ok = ok[(ok["input_len"] == workload[0]) & (ok["output_len"] == workload[1])].copy()
    ok["config"] = [config_label(r) for r in ok.to_dict("records")]
    rows = []
    for config, group in ok.groupby("config", sort=False):
        meeting = group[group["latency_p99_s"] <= slo_p99_s]
        row = {"config": config, "input_len": workload[0], "output_len": workload[1], "meets_slo": not meeting.empty}
        if not meeting.empty:
            best = meeting.loc[meeting["req_s"].idxmax()]
            gpus = int(best["tp"]) * int(best["pp"])
            row.update({
                "batch_size": int(best["batch_size"]), "gpus": gpus, "requests_per_gpu": best["batch_size"] / gpus,
                "latency_mean_s": best["latency_mean_s"], "latency_p99_s": best["latency_p99_s"],
                "gpu_util_pct": best["gpu_util_pct"], "req_s": best["req_s"], "requests_per_day": best["req_s"] * 86400,
                "output_tok_s": best["output_tok_s"],
                "usd_per_1m_output_tokens": gpu_hour_usd * gpus / (best["output_tok_s"] * 3600) * 1e6,
            })
        rows.append(row)
    matrix = pd.DataFrame(rows, columns=MATRIX_COLUMNS)
    meeting = list(matrix.loc[matrix["meets_slo"], "config"])
    if not meeting:
        raise QwenoptError(f"no configuration has a cell with P99 latency within {slo_p99_s:g} s")
    # Unasked, the baseline is hf-fp16 where it meets the SLO, else the first configuration that does.
    base = baseline or ("hf-fp16" if "hf-fp16" in meeting else meeting[0])
    base_rows = matrix[(matrix["config"] == base) & matrix["meets_slo"]]
    if base_rows.empty:
        raise QwenoptError(f"baseline {base!r} has no cell within the SLO here; configurations that do: {', '.join(meeting)}")
    base_cost = base_rows.iloc[0]["gpus"] / base_rows.iloc[0]["req_s"]
    matrix["relative_unit_cost"] = [g / r / base_cost if ok_ else math.nan
                                    for g, r, ok_ in zip(matrix["gpus"], matrix["req_s"], matrix["meets_slo"])]
    matrix.attrs["baseline"] = base
    return matrix.sort_values("relative_unit_cost", na_position="last").reset_index(drop=True)
