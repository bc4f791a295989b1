"""The CI gate against hand-computed changes and hand-made samples of known distribution."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.compare import compare, failed, parse_threshold, parse_thresholds
from qwenopt.engines.base import RequestSample
from qwenopt.errors import QwenoptError
from qwenopt.results import SCHEMA_VERSION, ResultWriter, append_samples
from qwenopt.schema import LOAD_COLUMNS, LOAD_SCHEMA_VERSION
from qwenopt.stats import cell_metrics


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


# --- the noise-aware gate, on hand-made samples ------------------------------------------------------------------

OUT_LEN = 16


def batches(seed, repeats=20, batch=4, latency=1.0, spread=0.01, slowdown=1.0):
    """Static-batch timings: every request of a repeat shares its batch's latency (as HF's engine reports)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        e2e = latency * slowdown * float(rng.lognormal(0, spread))
        out.append([RequestSample(e2e_s=e2e, ttft_s=e2e * 0.1, output_tokens=OUT_LEN) for _ in range(batch)])
    return out


def write_bench(path, iterations, batch=4, run_id="r1", **overrides):
    """A bench file of one cell whose row is derived from its samples, as `qwenopt bench` writes it."""
    metrics = cell_metrics(iterations, [max(s.e2e_s for s in it) for it in iterations], 32, OUT_LEN)
    r = {**row(batch, 0.0, 0.0), "run_id": run_id, "input_len": 32, "output_len": OUT_LEN, **metrics, **overrides}
    ResultWriter(path).append(r, [vars(s) for it in iterations for s in it])
    return path


def gate(base, new, *args):
    return CliRunner().invoke(app, ["compare", str(base), str(new), *args])


def verdicts(result):
    return [c["verdict"] for c in json.loads(result.output)["checks"]]


@pytest.mark.parametrize("column,value,reason", [
    ("latency_p50_s", math.nan, "unusable: new is NaN"),
    ("latency_p50_s", 0.0, "unusable: new is 0"),
    ("latency_p50_s", None, "unusable: new is NaN"),  # an empty CSV cell reads back as NaN
    ("output_tok_s", math.inf, "unusable: new is infinite"),
])
def test_nan_zero_and_empty_metrics_are_unusable_and_fail_the_gate(tmp_path, column, value, reason):
    base = write_bench(tmp_path / "base.csv", batches(1))
    new = write_bench(tmp_path / "new.csv", batches(2), **{column: value})
    result = gate(base, new)
    assert result.exit_code == 1 and reason in result.output
    result = gate(base, new, "--format", "json")
    assert reason in verdicts(result) and json.loads(result.output)["passed"] is False


def test_a_zero_or_missing_baseline_is_unusable_not_a_division_by_zero():
    zero = pd.DataFrame([row(1, 0.0, 1.0), row(8, 800.0, 2.0)])
    report = compare(zero, BASE, 0.05)
    assert list(report.loc[report["batch_size"] == "1", "verdict"]) == ["unusable: base is 0", "ok", "ok"]
    no_column = BASE.drop(columns=["tpot_p50_ms"])
    report = compare(no_column, BASE, 0.05)
    assert set(report.loc[report["metric"] == "tpot_p50_ms", "verdict"]) == {"unusable: base is missing"}
    assert failed(report)


def test_a_and_a_runs_of_one_distribution_pass(tmp_path):
    result = gate(write_bench(tmp_path / "a.csv", batches(1)), write_bench(tmp_path / "b.csv", batches(2)),
                  "--format", "json")
    assert result.exit_code == 0, result.output
    checks = json.loads(result.output)["checks"]
    assert {c["verdict"] for c in checks} == {"ok"}
    assert all(c["method"] == "bootstrap 20/20" for c in checks)  # units are the 20 repeats, not 80 requests
    assert all(c["ci_low"] < 0.01 and c["ci_high"] > -0.01 for c in checks)


def test_a_planted_10_percent_slowdown_with_tight_samples_is_a_regression(tmp_path):
    result = gate(write_bench(tmp_path / "a.csv", batches(1)),
                  write_bench(tmp_path / "b.csv", batches(2, slowdown=1.10)), "--format", "json")
    assert result.exit_code == 1
    checks = json.loads(result.output)["checks"]
    assert {c["verdict"] for c in checks} == {"regression"}
    assert all(c["ci_high"] < 0 and c["ci_low"] < -0.05 for c in checks)
    assert all(-0.12 < c["change"] < -0.07 for c in checks)


def runs_folder(folder, seeds, drifts, slowdown=1.0):
    """A folder of bench runs of one cell: tight repeats within each run, a different level (drift) per run, as
    runs on a busy machine or in other processes look."""
    folder.mkdir()
    for i, (seed, drift) in enumerate(zip(seeds, drifts)):
        write_bench(folder / f"run_{i}.csv", batches(seed, latency=drift, slowdown=slowdown), run_id=f"run{i}")
    return folder


def test_drift_between_runs_is_noise_when_a_side_is_a_folder_of_runs(tmp_path):
    drifts_a, drifts_b = (1.0, 1.2, 0.9), (1.15, 0.95, 1.05)
    single = gate(write_bench(tmp_path / "a.csv", batches(1, latency=drifts_a[0])),
                  write_bench(tmp_path / "b.csv", batches(2, latency=drifts_b[0])), "--format", "json")
    assert set(verdicts(single)) == {"regression"}  # one run a side: its drift passes for a 15% slowdown
    pooled = gate(runs_folder(tmp_path / "A", (1, 3, 5), drifts_a), runs_folder(tmp_path / "B", (2, 4, 6), drifts_b),
                  "--format", "json")
    assert pooled.exit_code == 0, pooled.output
    checks = json.loads(pooled.output)["checks"]
    assert {c["verdict"] for c in checks} <= {"ok", "noisy"} and {c["runs"] for c in checks} == {"3/3"}
    assert all(c["method"] == "bootstrap 60 in 3 runs/60 in 3 runs" for c in checks)
    assert all(c["ci_low"] < 0 < c["ci_high"] for c in checks)  # the interval holds the runs' drift


def test_a_slowdown_beyond_the_drift_of_pooled_runs_is_a_regression(tmp_path):
    drifts = (1.0, 1.02, 0.98, 1.01)
    result = gate(runs_folder(tmp_path / "A", (1, 3, 5, 7), drifts),
                  runs_folder(tmp_path / "B", (2, 4, 6, 8), drifts, slowdown=1.3), "--format", "json")
    assert result.exit_code == 1 and set(verdicts(result)) == {"regression"}
    checks = json.loads(result.output)["checks"]
    expected = {"output_tok_s": 1 / 1.3 - 1, "latency_p50_s": -0.3, "tpot_p50_ms": -0.3}  # slower counts negative
    assert all(c["change"] == pytest.approx(expected[c["metric"]], abs=0.03) for c in checks)


def test_a_failed_run_in_a_folder_fails_its_cell_and_a_folder_must_hold_one_kind(tmp_path):
    base = runs_folder(tmp_path / "A", (1, 3), (1.0, 1.0))
    new = runs_folder(tmp_path / "B", (2, 4), (1.0, 1.0))
    write_bench(new / "run_9.csv", batches(9), run_id="run9", status="oom")
    result = gate(base, new, "--format", "json")
    assert result.exit_code == 1 and set(verdicts(result)) == {"new oom"}
    (tmp_path / "E").mkdir()
    result = gate(base, tmp_path / "E")
    assert result.exit_code == 2 and "holds no result CSV" in result.output
    write_load(new / "load.csv", 1)
    result = gate(base, new)
    assert result.exit_code == 2 and "mixes bench and load result files" in result.output


def test_a_small_change_in_wide_noisy_samples_is_noisy_not_a_regression(tmp_path):
    base = write_bench(tmp_path / "a.csv", batches(1, spread=0.4))
    new = write_bench(tmp_path / "b.csv", batches(2, spread=0.4, slowdown=1.03))
    result = gate(base, new, "--format", "json")
    assert result.exit_code == 0, result.output
    assert "regression" not in verdicts(result) and "noisy" in verdicts(result)
    assert gate(base, new, "--fail-on-noisy").exit_code == 1


def test_noise_alone_fails_the_point_gate_but_not_the_bootstrap_gate(tmp_path):
    """A/A of wide samples (seed 6 happens to draw a slow new run): the old point comparison calls it a regression."""
    base = write_bench(tmp_path / "a.csv", batches(1, spread=0.4))
    new = write_bench(tmp_path / "b.csv", batches(6, spread=0.4))
    point = compare(pd.read_csv(base), pd.read_csv(new), 0.05)  # row values only, as the gate did before
    assert set(point["method"]) == {"point (no samples)"} and failed(point)
    result = gate(base, new, "--format", "json")
    assert result.exit_code == 0, result.output
    assert set(verdicts(result)) <= {"ok", "noisy"}


def test_too_few_repeats_fall_back_to_the_point_comparison_and_say_so(tmp_path):
    result = gate(write_bench(tmp_path / "a.csv", batches(1, repeats=3)),
                  write_bench(tmp_path / "b.csv", batches(2, repeats=3)), "--format", "json")
    assert {c["method"] for c in json.loads(result.output)["checks"]} == {"point (3 timings)"}


def test_per_metric_thresholds_override_the_default(tmp_path):
    assert parse_thresholds(["latency_p99_s=10%", "tpot_p50_ms=0.2"]) == {"latency_p99_s": 0.1, "tpot_p50_ms": 0.2}
    for bad, message in (("latency_p99_s", "METRIC=PERCENT"), ("vibes=5%", "unknown metric 'vibes'"),
                         ("latency_p99_s=lots", "--threshold latency_p99_s must be")):
        with pytest.raises(QwenoptError, match=message):
            parse_thresholds([bad])
    base = write_bench(tmp_path / "a.csv", batches(1))
    new = write_bench(tmp_path / "b.csv", batches(2, slowdown=1.10))
    result = gate(base, new, "--threshold", "latency_p50_s=25%", "--threshold", "output_tok_s=25%", "--format", "json")
    by_metric = {c["metric"]: c for c in json.loads(result.output)["checks"]}
    assert by_metric["latency_p50_s"]["verdict"] == "ok" and by_metric["latency_p50_s"]["threshold"] == 0.25
    assert by_metric["tpot_p50_ms"]["verdict"] == "regression" and by_metric["tpot_p50_ms"]["threshold"] == 0.05
    assert result.exit_code == 1
    assert gate(base, new, "--max-regression", "25%").exit_code == 0
    bad = gate(base, new, "--threshold", "nope")
    assert bad.exit_code == 2 and "METRIC=PERCENT" in bad.output


def test_markdown_and_json_formats(tmp_path):
    base = write_bench(tmp_path / "a.csv", batches(1))
    new = write_bench(tmp_path / "b.csv", batches(2, slowdown=1.10))
    md = gate(base, new, "--format", "md")
    lines = md.output.splitlines()
    assert md.exit_code == 1 and lines[0].startswith("### ")
    header = lines[2].strip("| ").split(" | ")
    assert header == ["cell", "metric", "base", "new", "change", "interval", "threshold", "method", "verdict"]
    assert lines[3] == "|" + "---|" * len(header)
    body = [line for line in lines[4:] if line.startswith("|")]
    assert len(body) == 3 and all(line.endswith("| **regression** |") for line in body)
    assert all(line.count("|") == len(header) + 1 for line in body)
    assert "**FAILED**: 3 of 3 checks failed" in md.output
    data = json.loads(gate(base, new, "--format", "json").output)
    assert data["passed"] is False and len(data["checks"]) == 3
    assert set(data["checks"][0]) >= {"metric", "base", "new", "change", "ci_low", "ci_high", "method", "verdict"}
    assert gate(base, new, "--format", "xml").exit_code == 2


def load_row(rate, **values):
    return {"schema_version": LOAD_SCHEMA_VERSION, "run_id": "L1", "level": rate, "class": "all", "status": "ok",
            "endpoint": "http://127.0.0.1:8000/v1", "server": "vllm", "regime": "vllm-fp16", "model": "m",
            "weights": "random", "quant": "none", "mode": "rate", "rate": rate, "input_len": 128, "output_len": 32,
            **values}


def write_load(path, seed, slowdown=1.0, requests=200, run_id="L1"):
    """A load file of two levels; its sidecar holds each level's requests as RequestRecords."""
    rng = np.random.default_rng(seed)
    rows = []
    for rate in (2, 8):
        records = []
        for i in range(requests):
            ttft = 0.05 * slowdown * float(rng.lognormal(0, 0.05))
            e2e = ttft + 31 * 0.01 * slowdown * float(rng.lognormal(0, 0.05))
            records.append({"index": i, "cls": "all", "warmup": False, "outcome": "ok", "ttft_s": ttft, "e2e_s": e2e,
                            "token_times_s": [], "output_tokens": 32})
        records.append({"index": requests, "cls": "all", "warmup": False, "outcome": "truncated", "ttft_s": 9.0,
                        "e2e_s": 99.0, "output_tokens": 3})  # never enters the figures
        e2e = [r["e2e_s"] for r in records[:-1]]
        rows.append(load_row(rate, run_id=run_id, latency_p50_s=float(np.median(e2e)),
                             ttft_p50_ms=1e3 * float(np.median([r["ttft_s"] for r in records[:-1]])),
                             output_tok_s=rate * 32.0 / slowdown))
        append_samples(path, {"run_id": run_id, "level": rate, "requests": records})
    pd.DataFrame(rows, columns=LOAD_COLUMNS).to_csv(path, index=False)
    return path


def test_load_rows_are_gated_like_bench_rows(tmp_path):
    base = write_load(tmp_path / "base.csv", 1)
    same = write_load(tmp_path / "same.csv", 2, run_id="L2")
    slower = write_load(tmp_path / "slower.csv", 3, slowdown=1.10, run_id="L3")
    args = ["--metric", "latency_p50_s", "--metric", "ttft_p50_ms", "--metric", "output_tok_s", "--format", "json"]
    result = gate(base, same, *args)
    assert result.exit_code == 0, result.output
    checks = json.loads(result.output)["checks"]
    assert len(checks) == 6 and {c["verdict"] for c in checks} == {"ok"}
    methods = {c["metric"]: c["method"] for c in checks}
    assert methods["latency_p50_s"] == "bootstrap 200/200"  # the truncated request is left out
    assert methods["output_tok_s"] == "point (one timing per run)"
    result = gate(base, slower, *args)
    assert result.exit_code == 1
    assert {c["verdict"] for c in json.loads(result.output)["checks"]} == {"regression"}
    bench = write_bench(tmp_path / "bench.csv", batches(1))
    mixed = gate(bench, base)
    assert mixed.exit_code == 2 and "compare like with like" in mixed.output


def test_a_missing_load_level_fails(tmp_path):
    base = write_load(tmp_path / "base.csv", 1)
    new = tmp_path / "new.csv"
    frame = pd.read_csv(base)
    frame[frame["rate"] == 2].to_csv(new, index=False)
    result = gate(base, new, "--format", "json")
    assert result.exit_code == 1
    assert {c["verdict"] for c in json.loads(result.output)["checks"] if c["rate"] == "8"} == {"missing"}


def test_a_file_of_another_kind_or_bad_options_are_bad_input(tmp_path):
    base = write_bench(tmp_path / "a.csv", batches(1))
    (tmp_path / "quality.csv").write_text("timestamp,regime,perplexity\nx,hf-fp16,3.1\n")
    result = gate(base, tmp_path / "quality.csv")
    assert result.exit_code == 2 and "neither a bench nor a load result file" in result.output
    assert gate(base, base, "--confidence", "1.5").exit_code == 2


def test_the_committed_ci_baseline_gates_against_itself_quietly():
    """The workflow's baseline (recorded on the dev machine) is a readable bench file with samples; A/A passes."""
    from pathlib import Path

    baseline = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines" / "cpu-tiny.csv"
    result = gate(baseline, baseline, "--format", "json")
    assert result.exit_code == 0, result.output
    checks = json.loads(result.output)["checks"]
    assert {c["method"] for c in checks} == {"bootstrap 15/15"}
    assert all(c["change"] == pytest.approx(0) and c["ci_low"] < 0 < c["ci_high"] for c in checks)


def test_environment_differences_name_each_fingerprint_column_that_differs():
    from qwenopt.compare import environment_differences

    base = pd.DataFrame({"gpu_name": ["NVIDIA H200"] * 2, "gpu_uuid": ["GPU-a", "GPU-a"], "gpu_count": [1.0, 1.0],
                         "driver": ["580.159.04"] * 2, "torch": ["2.11.0", None], "host": ["vm", "vm"]})
    new = pd.DataFrame({"gpu_name": ["NVIDIA H200"], "gpu_uuid": ["GPU-b"], "gpu_count": [1],
                        "driver": ["580.159.04"], "torch": [None], "host": ["other"]})
    # the card differs; the count reads alike as 1.0 and 1; torch is unknown on one side, host is not a figure's cause
    assert environment_differences(base, new) == ["gpu_uuid: GPU-a (base) against GPU-b (new)"]
    assert environment_differences(base, base) == []
    # a side pooled from runs on two cards shows both
    assert environment_differences(pd.concat([base, new]), new) == [
        "gpu_uuid: GPU-a, GPU-b (base) against GPU-b (new)"]


def test_the_gate_notes_a_run_on_another_card_in_every_format_without_failing(tmp_path):
    base = write_bench(tmp_path / "a.csv", batches(1), gpu_uuid="GPU-a", driver="580")
    new = write_bench(tmp_path / "b.csv", batches(2), gpu_uuid="GPU-b", driver="580")
    table = gate(base, new)
    assert table.exit_code == 0, table.output
    assert "note: the sides' environments differ, so a change may be theirs, not the code's: gpu_uuid: GPU-a " \
           "(base) against GPU-b (new)" in " ".join(table.output.split())
    md = gate(base, new, "--format", "md")
    assert md.exit_code == 0 and "- gpu_uuid: GPU-a (base) against GPU-b (new)" in md.output.splitlines()
    data = json.loads(gate(base, new, "--format", "json").output)
    assert data["passed"] is True and data["environment_differences"] == ["gpu_uuid: GPU-a (base) against GPU-b (new)"]
    same = json.loads(gate(base, base, "--format", "json").output)
    assert same["environment_differences"] == [] and "note:" not in gate(base, base).output
