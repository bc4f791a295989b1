"""Failures are data: OOM cells, wrong token counts, interrupts and crashed engines all leave honest rows."""
import dataclasses

import pytest
import torch

from qwenopt.bench import BenchOptions, execute, execute_isolated, plan_sweep
from qwenopt.engines.hf import HFEngine
from qwenopt.errors import QwenoptError
from qwenopt.regimes import RegimeSpec, check_runnable
from qwenopt.results import read_results


def tiny_plan(tmp_path, **overrides):
    options = dict(batch="1,2,4", input_len="8", output_len="3", repeats=1, warmup=0, out=str(tmp_path / "r.csv"))
    return plan_sweep(BenchOptions(**{**options, **overrides}), gpus=0)


def test_out_of_memory_cell_becomes_an_oom_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = HFEngine.generate

    def generate(self, prompts, output_len):
        if len(prompts) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, prompts, output_len)

    monkeypatch.setattr(HFEngine, "generate", generate)
    rows = execute(tiny_plan(tmp_path))
    assert [r["status"] for r in rows] == ["ok", "oom", "ok"]
    frame = read_results(tmp_path / "r.csv")
    assert list(frame["status"]) == ["ok", "oom", "ok"]
    assert "out of memory" in frame.loc[1, "error"]
    assert frame["output_tok_s"].isna().tolist() == [False, True, False]


def test_other_failures_are_error_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(HFEngine, "generate", lambda self, p, n: (_ for _ in ()).throw(RuntimeError("kernel exploded")))
    rows = execute(tiny_plan(tmp_path, batch="1"))
    assert rows[0]["status"] == "error" and rows[0]["error"] == "RuntimeError: kernel exploded"


def test_wrong_token_count_marks_the_cell_invalid_not_averaged_in(tmp_path, monkeypatch):
    real = HFEngine.generate

    def generate(self, prompts, output_len):
        samples = real(self, prompts, output_len)
        return [dataclasses.replace(samples[0], output_tokens=output_len - 1)] + samples[1:]

    monkeypatch.setattr(HFEngine, "generate", generate)
    row = execute(tiny_plan(tmp_path, batch="2"))[0]
    assert row["status"] == "invalid" and row["regime"] == "hf-fp16" and row["batch_size"] == 2 and row["samples"] == 2
    assert row["error"] == "1 requests did not produce exactly 3 tokens"
    frame = read_results(tmp_path / "r.csv")
    assert frame["output_tok_s"].isna().all() and frame["latency_p50_s"].isna().all()


def test_interrupted_sweep_keeps_every_finished_cell(tmp_path, monkeypatch):
    real = HFEngine.generate

    def generate(self, prompts, output_len):
        if len(prompts) == 4:
            raise KeyboardInterrupt
        return real(self, prompts, output_len)

    monkeypatch.setattr(HFEngine, "generate", generate)
    with pytest.raises(KeyboardInterrupt):
        execute(tiny_plan(tmp_path))
    frame = read_results(tmp_path / "r.csv")
    assert list(frame["batch_size"]) == [1, 2] and set(frame["status"]) == {"ok"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary leftovers


def test_isolated_run_writes_rows_from_the_child(tmp_path):
    rows = execute_isolated(tiny_plan(tmp_path, batch="1,2"), timeout_s=600)  # generous: a busy machine
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert len(read_results(tmp_path / "r.csv")) == 2


def test_engine_that_cannot_load_leaves_a_failed_row_per_cell(tmp_path):
    plan = tiny_plan(tmp_path, batch="1,2")
    plan.source = dataclasses.replace(plan.source, config={**plan.source.config, "model_type": "no-such-arch"})
    rows = execute_isolated(plan, timeout_s=600)
    assert [r["status"] for r in rows] == ["error", "error"]
    assert all(r["error"].startswith("load failed: ValueError") for r in rows)


def test_hung_engine_is_killed_and_its_cells_become_timeout_rows(tmp_path):
    plan = tiny_plan(tmp_path, batch="1,2", output_len="2000")
    rows = execute_isolated(plan, timeout_s=1.0)  # far too short for the child to even import torch
    assert [r["status"] for r in rows] == ["error", "error"]
    assert rows[0]["error"] == "timeout: the engine process ran over 1 s and was killed"


def test_missing_extra_names_the_extra_to_install():
    spec = RegimeSpec("x-fake", "hf", "w", "none", "sdpa", "fake", ("no_such_package_qwenopt",), False, "fake")
    with pytest.raises(QwenoptError, match=r"needs no_such_package_qwenopt: install it with pip install 'qwenopt\[fake\]'"):
        check_runnable(spec, "cpu")


def test_gpu_only_regime_refuses_the_cpu():
    spec = RegimeSpec("x-gpu", "hf", "w", "none", "sdpa", None, (), True, "fake")
    with pytest.raises(QwenoptError, match="runs on a CUDA GPU only"):
        check_runnable(spec, "cpu")


def test_timings_count_repeats_for_a_static_batch_and_requests_where_each_is_timed(tmp_path, monkeypatch):
    rows = execute(tiny_plan(tmp_path, batch="4", repeats=3))
    assert (rows[0]["samples"], rows[0]["timings"]) == (12, 3)  # HF: one batch timing per repeat
    monkeypatch.setattr(HFEngine, "timings_per_request", True, raising=False)  # as vLLM's per-request metrics
    rows = execute(tiny_plan(tmp_path, batch="4", repeats=3))
    assert (rows[0]["samples"], rows[0]["timings"]) == (12, 12)
