"""`tune --launch --try`: a configuration the user names is measured right after the defaults, and the sampler
learns from it like from any trial."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qwenopt.cli.app import app
from qwenopt.errors import QwenoptError
from qwenopt.serving.tune_online import SearchSettings, search
from qwenopt.serving.tune_space import VLLM, defaults, parse_space, parse_tries

pytest.importorskip("optuna")
from .test_tune_online import SPACE, Clock, quiet, synthetic  # noqa: E402

MARLIN = {**defaults(SPACE), "linear_backend": "marlin"}


def test_a_given_configuration_runs_right_after_the_defaults():
    clock = Clock()
    measure = synthetic(clock)
    results = search(SPACE, SearchSettings("s", trials=3, seed=0, given=(MARLIN,)), measure, say=quiet, clock=clock)
    assert [r.search_step for r in results] == ["default", "given", "random"]
    assert results[1].config == MARLIN and measure.measured.count(MARLIN) == 1


def test_a_given_configuration_already_measured_is_not_measured_again_on_resume():
    clock = Clock()
    first = search(SPACE, SearchSettings("s", trials=2, seed=0, given=(MARLIN,)), synthetic(clock), say=quiet,
                   clock=clock)
    measure = synthetic(clock)
    more = search(SPACE, SearchSettings("s", trials=3, seed=0, given=(MARLIN,)), measure, finished=first,
                  say=quiet, clock=clock)
    assert [r.search_step for r in more] == ["default", "given", "random"]
    assert MARLIN not in measure.measured and len(measure.measured) == 1


def test_the_sampler_counts_a_given_trial_as_one_of_its_own():
    """With startup 2 (the defaults and one more), a given trial ends the random phase: the next step is TPE's."""
    results = search(SPACE, SearchSettings("s", trials=3, seed=0, startup=2, given=(MARLIN,)), synthetic(Clock()),
                     say=quiet, clock=Clock())
    assert [r.search_step for r in results] == ["default", "given", "tpe"]


def test_try_names_one_value_of_the_search_for_each_knob_it_sets():
    space = parse_space("linear_backend=auto,marlin;kv_cache_dtype=auto,fp8", int4=True, quant="awq")
    tries = parse_tries(["linear_backend=marlin", "linear_backend=marlin;kv_cache_dtype=fp8"], space, VLLM)
    assert tries[0] == {**defaults(space), "linear_backend": "marlin"}
    assert tries[1] == {**defaults(space), "linear_backend": "marlin", "kv_cache_dtype": "fp8"}
    assert parse_tries(None, space, VLLM) == ()
    for text, message in [("spec_acceptance=0.8", "not a knob of this search"),
                          ("max_num_seqs=128", r"values \(default\), got 128"),
                          ("linear_backend=machete", "one of this search's values"),
                          ("linear_backend=auto,marlin", "one of this search's values"),
                          ("linear_backend", "KNOB=V1,V2")]:
        with pytest.raises(QwenoptError, match=message):
            parse_tries([text], space, VLLM)


def test_try_goes_with_launch():
    result = CliRunner().invoke(app, ["tune", "--slo-p99", "2", "--try", "linear_backend=marlin"])
    assert result.exit_code != 0 and "--try go with --launch" in result.output


def test_try_end_to_end_its_trial_starts_with_its_flags_and_says_given(tmp_results, monkeypatch):
    import qwenopt.cli.load
    from qwenopt.results import read_jsonl

    from .test_tune_launch import TUNE, fake_start_server

    fake = fake_start_server(oom_at=0)
    monkeypatch.setattr(qwenopt.cli.load, "start_server", fake)
    result = CliRunner().invoke(app, [*TUNE, "--trials", "2", "--try", "linear_backend=marlin;max_num_seqs=128"])
    assert result.exit_code == 0, result.output
    trials = read_jsonl(tmp_results / "tune.trials.jsonl")
    assert [t["search_step"] for t in trials] == ["default", "given"]
    assert trials[1]["config"]["linear_backend"] == "marlin" and trials[1]["config"]["max_num_seqs"] == 128
    assert fake.started[1]["max_num_seqs"] == 128  # the second server started with the given configuration
    bad = CliRunner().invoke(app, [*TUNE, "--trials", "2", "--try", "max_num_seqs=512", "--out", "other.csv"])
    assert bad.exit_code == 2 and "--try: max_num_seqs takes one of this search's values" in bad.output
