"""The CI gate against hand-computed changes."""
import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.compare import compare, failed, parse_threshold
from qwenopt.errors import QwenoptError
from qwenopt.results import SCHEMA_VERSION, ResultWriter


def row(batch, tok_s, p50, status="ok", tpot=10.0):
    return {"schema_version": SCHEMA_VERSION, "run_id": "r", "regime": "vllm-fp16", "model": "qwen2.5-7b",
            "weights": "random", "quant": "none", "tp": 1, "pp": 1, "decode_mode": "cuda-graphs", "batch_size": batch,
            "input_len": 128, "output_len": 256, "status": status, "output_tok_s": tok_s, "latency_p50_s": p50,
            "tpot_p50_ms": tpot}


BASE = pd.DataFrame([row(1, 100.0, 1.0), row(8, 800.0, 2.0)])


def test_threshold_parsing():
    assert parse_threshold("5%") == pytest.approx(0.05) and parse_threshold("0.1") == pytest.approx(0.1)
    for bad in ("five", "150%", "-1%"):
        with pytest.raises(QwenoptError, match="--max-regression"):
            parse_threshold(bad)


def test_changes_within_tolerance_pass_and_beyond_it_fail():
    new = pd.DataFrame([row(1, 96.0, 1.04), row(8, 800.0, 2.0)])  # -4% throughput, +4% latency
    report = compare(BASE, new, 0.05)
    assert not failed(report)
    cell = report[(report["batch_size"] == "1") & (report["metric"] == "output_tok_s")].iloc[0]
    assert cell["change"] == pytest.approx(-0.04)
    latency = report[(report["batch_size"] == "1") & (report["metric"] == "latency_p50_s")].iloc[0]
    assert latency["change"] == pytest.approx(-0.04)  # slower is worse: the change counts against
    report = compare(BASE, pd.DataFrame([row(1, 94.0, 1.0), row(8, 800.0, 2.0)]), 0.05)
    assert failed(report) and list(report.loc[report["verdict"] != "ok", "metric"]) == ["output_tok_s"]


def test_improvements_pass_and_missing_or_failed_cells_fail():
    assert not failed(compare(BASE, pd.DataFrame([row(1, 200.0, 0.5), row(8, 900.0, 1.0)]), 0.0))
    report = compare(BASE, pd.DataFrame([row(1, 100.0, 1.0), row(8, None, None, status="oom")]), 0.05)
    assert set(report.loc[report["batch_size"] == "8", "verdict"]) == {"new oom"}
    report = compare(BASE, pd.DataFrame([row(1, 100.0, 1.0)]), 0.05)
    assert set(report.loc[report["batch_size"] == "8", "verdict"]) == {"missing"}


def test_the_last_run_of_a_cell_counts():
    new = pd.DataFrame([row(1, 10.0, 9.0), row(8, 800.0, 2.0), row(1, 100.0, 1.0)])
    assert not failed(compare(BASE, new, 0.05))


def write(path, frame):
    writer = ResultWriter(path)
    for r in frame.to_dict("records"):
        writer.append(r, [])


def test_compare_command_exit_codes(tmp_path):
    write(tmp_path / "base.csv", BASE)
    write(tmp_path / "same.csv", BASE)
    write(tmp_path / "worse.csv", pd.DataFrame([row(1, 50.0, 1.0), row(8, 800.0, 2.0)]))
    runner = CliRunner()
    assert runner.invoke(app, ["compare", str(tmp_path / "base.csv"), str(tmp_path / "same.csv")]).exit_code == 0
    result = runner.invoke(app, ["compare", str(tmp_path / "base.csv"), str(tmp_path / "worse.csv"),
                                 "--max-regression", "10%"])
    assert result.exit_code == 1 and "regression" in result.output
    bad = runner.invoke(app, ["compare", str(tmp_path / "base.csv"), str(tmp_path / "nope.csv")])
    assert bad.exit_code == 2 and "no such result file" in bad.output
    bad = runner.invoke(app, ["compare", str(tmp_path / "base.csv"), str(tmp_path / "same.csv"), "--metric", "vibes"])
    assert bad.exit_code == 2 and "cannot gate on vibes" in bad.output
