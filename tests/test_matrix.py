"""The offline cost matrix against hand-computed values (the online one is in test_matrix_online.py)."""
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.matrix import cost_matrix
from qwenopt.errors import QwenoptError
from qwenopt.results import SCHEMA_VERSION, ResultWriter


def row(regime, batch, p99, req_s, out_tok_s, tp=1, quant="none", status="ok", input_len=512, output_len=256, util=50.0):
    return {"schema_version": SCHEMA_VERSION, "run_id": "r", "regime": regime, "quant": quant, "tp": tp, "pp": 1,
            "decode_mode": "dynamic", "batch_size": batch, "input_len": input_len, "output_len": output_len,
            "status": status, "latency_p99_s": p99, "latency_mean_s": p99 / 2, "req_s": req_s,
            "output_tok_s": out_tok_s, "gpu_util_pct": util}


FRAME = pd.DataFrame([
    row("hf-fp16", 1, 0.8, 1.0, 256.0),
    row("hf-fp16", 8, 1.5, 4.0, 1024.0),  # over the 1 s SLO: not eligible
    row("vllm-fp16", 8, 0.9, 8.0, 2048.0),
    row("vllm-fp16", 64, 0.95, 20.0, 5120.0, status="oom"),  # failed cells never count
    row("vllm-int4", 32, 0.99, 16.0, 4096.0, quant="awq:machete"),
    row("vllm-fp16", 64, 0.7, 24.0, 6144.0, tp=2),
])


def test_each_configuration_is_costed_at_its_best_cell_within_the_slo():
    m = cost_matrix(FRAME, slo_p99_s=1.0, gpu_hour_usd=3.6).set_index("config")
    assert list(m.index) == ["vllm-int4 (awq:machete)", "vllm-fp16 tp2", "vllm-fp16", "hf-fp16"]  # cheapest first
    hf, v, v2, q = m.loc["hf-fp16"], m.loc["vllm-fp16"], m.loc["vllm-fp16 tp2"], m.loc["vllm-int4 (awq:machete)"]
    assert (hf["batch_size"], v["batch_size"], v2["batch_size"], q["batch_size"]) == (1, 8, 64, 32)
    assert v2["gpus"] == 2 and v2["concurrency_per_gpu"] == 32
    assert v["requests_per_day"] == 8.0 * 86400
    # unit cost = (GPUs / req/s) / baseline's (1 / 1.0): vllm 1/8, tp2 2/24, int4 1/16
    assert v["relative_unit_cost"] == pytest.approx(0.125)
    assert v2["relative_unit_cost"] == pytest.approx(2 / 24)
    assert q["relative_unit_cost"] == pytest.approx(1 / 16)
    # $ per 1M output tokens = 3.6 $/h x GPUs / (tok/s x 3600 s/h) x 1e6: hf 1e6 / 256 / 1000 = 3.90625
    assert hf["usd_per_1m_output_tokens"] == pytest.approx(3.90625)
    assert v2["usd_per_1m_output_tokens"] == pytest.approx(2 * 1e3 / 6144)


def test_a_configuration_with_no_cell_within_the_slo_is_listed_but_not_costed():
    m = cost_matrix(FRAME, slo_p99_s=0.85, gpu_hour_usd=1.0).set_index("config")
    assert not m.loc["vllm-fp16", "meets_slo"] and math.isnan(m.loc["vllm-fp16", "relative_unit_cost"])
    assert m.loc["vllm-fp16 tp2", "relative_unit_cost"] == pytest.approx(2 / 24)


def test_baseline_and_workload_choices_are_checked():
    m = cost_matrix(FRAME, 1.0, 1.0, baseline="vllm-fp16").set_index("config")
    assert m.loc["hf-fp16", "relative_unit_cost"] == pytest.approx(8.0)
    with pytest.raises(QwenoptError, match="baseline 'hf-nf4' has no cell within the SLO"):
        cost_matrix(FRAME, 1.0, 1.0, baseline="hf-nf4")
    two = pd.concat([FRAME, pd.DataFrame([row("hf-fp16", 1, 0.5, 1.0, 128.0, output_len=128)])])
    with pytest.raises(QwenoptError, match=r"several workloads \(in 512 / out 128, in 512 / out 256\)"):
        cost_matrix(two, 1.0, 1.0)
    assert len(cost_matrix(two, 1.0, 1.0, output_len=128)) == 1
    with pytest.raises(QwenoptError, match="no configuration has a cell with P99 latency within 0.1 s"):
        cost_matrix(FRAME, 0.1, 1.0)


def test_matrix_command_reads_result_files_and_writes_the_matrix(tmp_path):
    path = tmp_path / "r.csv"
    writer = ResultWriter(path)
    for r in FRAME.to_dict("records"):
        writer.append(r, [])
    result = CliRunner().invoke(app, ["matrix", str(path), "--slo-p99", "1", "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert "unit cost" in result.output and "relative to hf-fp16" in " ".join(result.output.split())
    assert list(pd.read_csv(tmp_path / "m.csv")["config"]) == [
        "vllm-int4 (awq:machete)", "vllm-fp16 tp2", "vllm-fp16", "hf-fp16"]
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    bad = CliRunner().invoke(app, ["matrix", str(tmp_path / "bad.csv")])
    assert bad.exit_code == 2 and "not a qwenopt result file" in bad.output and "no ok bench rows" in bad.output


def test_hf_gptq_kernels_are_separate_configurations():
    frame = pd.DataFrame([
        row("hf-fp16", 1, 0.8, 1.0, 256.0),
        row("hf-gptq", 1, 0.9, 0.5, 128.0, quant="gptq:triton"),
        row("hf-gptq", 1, 0.9, 0.8, 204.8, quant="gptq:marlin"),
    ])
    m = cost_matrix(frame, slo_p99_s=1.0, gpu_hour_usd=3.6).set_index("config")
    assert list(m.index) == ["hf-fp16", "hf-gptq (gptq:marlin)", "hf-gptq (gptq:triton)"]
    assert m.loc["hf-gptq (gptq:triton)", "relative_unit_cost"] == pytest.approx(2.0)  # 1/0.5 over 1/1.0
    assert m.loc["hf-gptq (gptq:marlin)", "relative_unit_cost"] == pytest.approx(1.25)
