"""The batch search against hand-worked sequences, and tune end to end on the tiny model."""
import pytest
from typer.testing import CliRunner

from qwenopt.bench import BenchOptions, execute, execute_isolated, plan_tune
from qwenopt.cli import app
from qwenopt.errors import QwenoptError
from qwenopt.results import read_results
from qwenopt.tune import BatchSearch, Searcher, best_row, next_batch


def probe_order(fits, max_batch=256):
    """The batches the search measures when a batch meets the SLO exactly when fits(batch)."""
    verdicts, order = {}, []
    while (batch := next_batch(verdicts, max_batch)) is not None:
        order.append(batch)
        verdicts[batch] = fits(batch)
    return order


def test_doubling_then_bisection_finds_the_boundary():
    # 1..32 fit, 64 does not; bisect (32, 64): 48 no, 40 yes, 44 no, 42 no, 41 no -> the answer is 40.
    assert probe_order(lambda b: b <= 40) == [1, 2, 4, 8, 16, 32, 64, 48, 40, 44, 42, 41]


def test_search_stops_at_batch_1_or_at_the_cap():
    assert probe_order(lambda b: False) == [1]
    assert probe_order(lambda b: True, max_batch=100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert probe_order(lambda b: b < 2) == [1, 2]


def row(batch, status="ok", p99=0.5, tok_s=100.0):
    return {"batch_size": batch, "status": status, "latency_p99_s": p99, "output_tok_s": tok_s}


def test_failed_cells_bound_the_search_like_a_missed_slo():
    searcher = Searcher(BatchSearch(slo_p99_s=1.0, input_len=8, output_len=4, max_batch=64))
    cells = searcher.cells()
    assert next(cells).batch_size == 1
    searcher.record(row(1))
    assert next(cells).batch_size == 2
    searcher.record(row(2, status="oom", p99=None))
    assert next(cells, None) is None


def test_best_row_is_the_fastest_within_the_slo():
    rows = [row(1, tok_s=10), row(2, tok_s=30, p99=0.9), row(4, tok_s=50, p99=1.5), row(8, status="oom", tok_s=None)]
    assert best_row(rows, 1.0)["batch_size"] == 2
    assert best_row(rows, 0.1) is None


def tune_plan(tmp_path, slo=60.0, max_batch=4):
    options = BenchOptions(input_len="8", output_len="3", repeats=1, warmup=0, out=str(tmp_path / "t.csv"))
    return plan_tune(options, slo, max_batch, gpus=0)


def test_tune_runs_the_search_on_the_real_engine(tmp_path):
    rows = execute(tune_plan(tmp_path))
    assert [r["batch_size"] for r in rows] == [1, 2, 4]  # a generous SLO: doubling up to the cap
    assert [r["batch_size"] for r in read_results(tmp_path / "t.csv").to_dict("records")] == [1, 2, 4]


def test_tune_in_a_child_that_dies_leaves_a_row_for_the_batch_it_was_on(tmp_path):
    rows = execute_isolated(tune_plan(tmp_path), timeout_s=1.0)  # too short for the child to import torch
    assert [(r["batch_size"], r["status"]) for r in rows] == [(1, "error")]
    assert rows[0]["error"].startswith("timeout")


def test_tune_checks_its_request():
    with pytest.raises(QwenoptError, match="--slo-p99 must be a positive number"):
        plan_tune(BenchOptions(), 0.0, 8, gpus=0)
    with pytest.raises(QwenoptError, match="--max-batch must be at least 1"):
        plan_tune(BenchOptions(), 1.0, 0, gpus=0)
    with pytest.raises(QwenoptError, match="one --input-len and one --output-len"):
        plan_tune(BenchOptions(input_len="8,16"), 1.0, 8, gpus=0)


def test_tune_command_reports_the_best_batch_or_exits_1(tmp_results, monkeypatch):
    import qwenopt.bench

    real = qwenopt.bench.cell_metrics

    def throughput_grows_with_batch(iterations, walls, input_len, output_len, **kwargs):
        # The search's choice, not this CPU's speed, is under test: make batch b give 10 x b tok/s.
        metrics = real(iterations, walls, input_len, output_len, **kwargs)
        metrics["output_tok_s"] = 10.0 * len(iterations[0])
        return metrics

    monkeypatch.setattr(qwenopt.bench, "cell_metrics", throughput_grows_with_batch)
    runner = CliRunner()
    args = ["tune", "--input-len", "8", "--output-len", "3", "--repeats", "1", "--warmup", "0", "--max-batch", "2"]
    result = runner.invoke(app, [*args, "--slo-p99", "60"])
    assert result.exit_code == 0, result.output
    assert "best: batch 2" in " ".join(result.output.split())
    assert len(read_results(tmp_results / "results" / "tune_hf-fp16_qwen2-tiny.csv")) == 2
    result = runner.invoke(app, [*args, "--slo-p99", "1e-9", "--out", "none.csv"])
    assert result.exit_code == 1 and "no batch meets P99 <= 1e-09 s" in " ".join(result.output.split())
    assert len(read_results(tmp_results / "none.csv")) == 1  # the probe that missed is still a row
    result = runner.invoke(app, [*args, "--slo-p99", "60", "--attn", "sdpa", "--out", "attn.csv"])
    assert result.exit_code == 0, result.output
    assert set(read_results(tmp_results / "attn.csv")["attn"]) == {"sdpa"}  # the kernel asked for, in every probe
