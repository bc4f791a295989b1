"""tune --launch: the search on a synthetic objective, budget, failures, resume, a trial's load levels, and the engine
flags of each knob (the command end to end: test_tune_launch.py)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import replace

import pytest

from qwenopt.errors import QwenoptError
from qwenopt.serving.launcher import cli_flags
from qwenopt.serving.tune_online import SearchSettings, pareto_front, probe_hint, search, winner
from qwenopt.serving.tune_space import defaults, engine_args_of, grid_size, parse_space
from qwenopt.serving.tune_trial import TrialResult, level_verdict, start_failure_status

pytest.importorskip("optuna")

SPACE = {
    "linear_backend": ("auto", "machete", "marlin"),
    "max_num_seqs": ("default", 64, 128, 256, 512),
    "max_num_batched_tokens": ("default", 2048, 4096, 16384),
    "kv_cache_dtype": ("auto", "fp8"),
    "cudagraph_mode": ("default", "PIECEWISE", "FULL_DECODE_ONLY"),
}
BEST = {"linear_backend": "marlin", "max_num_seqs": 256, "max_num_batched_tokens": 4096, "kv_cache_dtype": "fp8",
        "cudagraph_mode": "default"}
EFFECT = {  # a known goodput surface: each knob adds its own share; BEST takes the largest of each
    "linear_backend": {"auto": 0, "machete": 0, "marlin": 6},
    "max_num_seqs": {"default": 2, 64: -4, 128: 1, 256: 5, 512: 3},
    "max_num_batched_tokens": {"default": 2, 2048: -2, 4096: 4, 16384: 1},
    "kv_cache_dtype": {"auto": 0, "fp8": 3},
    "cudagraph_mode": {"default": 2, "PIECEWISE": 0, "FULL_DECODE_ONLY": 1},
}
START_S, LOAD_S = 120.0, 60.0  # a simulated engine start and load time per trial


def goodput_of(config: dict) -> float:
    """The known goodput of a configuration on the surface EFFECT."""
    return 10 + sum(EFFECT[k][config[k]] for k in EFFECT)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def synthetic(clock: Clock, fail: set | None = None):
    """A measure(number, step, config) of known goodput whose every trial costs START_S + LOAD_S on `clock`."""
    measured = []

    def measure(number, step, config):
        clock.now += START_S + LOAD_S
        measured.append(config)
        if fail and any(config.get(k) == v for k, v in fail):
            return TrialResult(number, step, config, "oom", "CUDA out of memory", wall_s=START_S + LOAD_S)
        goodput = goodput_of(config)
        return TrialResult(number, step, config, "ok", goodput_req_s=goodput, latency_p99_s=2.0 - goodput / 100,
                           usd_per_1m_output=1.0 / goodput, wall_s=START_S + LOAD_S)

    measure.measured = measured
    return measure


def quiet(_text):
    pass


def test_the_search_finds_a_known_optimum_in_fewer_trials_than_the_grid():
    grid = grid_size(SPACE)
    assert grid == 3 * 5 * 4 * 2 * 3 == 360
    clock = Clock()
    measure = synthetic(clock)
    results = search(SPACE, SearchSettings("s", trials=40, seed=0), measure, say=quiet, clock=clock)
    assert results[0].trial == 0 and results[0].search_step == "default" and results[0].config == defaults(SPACE)
    best = winner(results)
    assert best.config == BEST  # the optimum, found within the 40-trial budget
    first = next(r.trial for r in results if r.config == BEST)
    assert first + 1 < grid / 4  # far fewer trials than the grid's 360
    assert len({json.dumps(c, sort_keys=True) for c in measure.measured}) == len(measure.measured)  # no config twice
    assert {r.search_step for r in results[1:]} == {"random", "tpe"}


def test_the_same_seed_gives_the_same_trials():
    runs = [search(SPACE, SearchSettings("s", trials=8, seed=3), synthetic(Clock()), say=quiet, clock=Clock())
            for _ in range(2)]
    assert [r.config for r in runs[0]] == [r.config for r in runs[1]]


def test_the_budget_stops_before_a_trial_would_overrun_it():
    clock = Clock()
    messages = []
    settings = SearchSettings("s", trials=20, budget_s=7 * 60, first_estimate_s=START_S + LOAD_S, seed=0)
    results = search(SPACE, settings, synthetic(clock), say=messages.append, clock=clock)
    # 180 s a trial: two fit in 420 s (the second starts at 180 expecting 180 more), a third would end at 540
    assert len(results) == 2 and clock.now <= settings.budget_s
    assert "budget" in messages[-1]


def test_no_trial_starts_when_even_the_first_estimate_overruns():
    clock = Clock()
    settings = SearchSettings("s", trials=5, budget_s=60, first_estimate_s=200, seed=0)
    assert search(SPACE, settings, synthetic(clock), say=quiet, clock=clock) == []


def test_failed_trials_count_as_zero_and_the_search_goes_on():
    clock = Clock()
    measure = synthetic(clock, fail={("max_num_seqs", 512)})
    results = search(SPACE, SearchSettings("s", trials=25, seed=1), measure, say=quiet, clock=clock)
    failed = [r for r in results if r.status == "oom"]
    assert failed and len(results) == 25  # the failures did not stop it
    assert all(r.score("goodput") == 0 for r in failed)
    assert winner(results).status == "ok"


def test_resume_continues_from_the_finished_trials():
    clock = Clock()
    first = search(SPACE, SearchSettings("s", trials=4, seed=0), synthetic(clock), say=quiet, clock=clock)
    measure = synthetic(clock)
    more = search(SPACE, SearchSettings("s", trials=7, seed=0), measure, finished=first, say=quiet, clock=clock)
    assert [r.trial for r in more] == list(range(7))
    assert len(measure.measured) == 3  # only the new ones ran; trial 0 (the defaults) was not repeated
    assert all(c not in [r.config for r in first] for c in measure.measured)


def test_a_trial_cut_by_ctrl_c_keeps_its_number_but_counts_for_nothing_else():
    clock, kept = Clock(), []
    measure = synthetic(clock)

    def interrupting(number, step, config):
        if number == 2:
            raise KeyboardInterrupt
        return measure(number, step, config)

    with pytest.raises(KeyboardInterrupt):
        search(SPACE, SearchSettings("s", trials=5, seed=0), interrupting, on_trial=kept.append, say=quiet, clock=clock)
    assert [(r.trial, r.status) for r in kept] == [(0, "ok"), (1, "ok"), (2, "interrupted")]
    more = search(SPACE, SearchSettings("s", trials=4, seed=0), measure, finished=kept, say=quiet, clock=clock)
    assert [(r.trial, r.status) for r in more][3:] == [(3, "ok"), (4, "ok")]  # 4 finished trials: 0, 1, 3, 4


def test_the_budget_counts_from_the_runs_start():
    clock = Clock()
    clock.now = 300.0  # the run began at 0: imports, checks and a slow model folder took 300 s
    settings = SearchSettings("s", trials=5, budget_s=420, first_estimate_s=180, seed=0)
    assert search(SPACE, settings, synthetic(clock), say=quiet, clock=clock, started=0.0) == []


def test_pareto_front_keeps_the_trials_nothing_beats_on_goodput_and_p99():
    def r(n, goodput, p99):
        return TrialResult(n, "tpe", {}, "ok", goodput_req_s=goodput, latency_p99_s=p99)

    trials = [r(0, 10, 1.5), r(1, 12, 1.9), r(2, 9, 1.2), r(3, 11, 1.95), TrialResult(4, "tpe", {}, "oom")]
    assert [t.trial for t in pareto_front(trials)] == [1, 0, 2]
    assert winner(trials).trial == 1


def fake_trial(monkeypatch, meets, drained=1.0):
    """A TrialRunner whose levels are a server whose burst completes 100 req/s and whose P99 E2E is 1 s where
    `meets(mode, rate)` says so, else 5 s (SLO 2 s); the levels asked for are listed in the returned list. A level
    measures `drained` x its rate in req/s (a short level's req/s counts the drain after its last arrival)."""
    from qwenopt.serving.tune_trial import TrialPlan, TrialRunner

    offered = []

    def level(self, number, mode, value):
        offered.append((mode, value))
        rate = 100.0 if mode == "closed" else value
        return {"status": "ok", "sent": 100, "completed": 100, "mode": mode, "rate": None if mode == "closed" else
                value, "arrived_req_s": rate, "req_s": rate * drained, "output_tok_s": rate * 128,
                "total_tok_s": rate * 640, "latency_p99_s": 1.0 if meets(mode, rate) else 5.0, "ttft_p99_ms": 50.0,
                "gpus": 1}

    monkeypatch.setattr(TrialRunner, "_level", level)
    return TrialRunner(None, None, None, TrialPlan(probes=3), {"e2e": 2.0}, 2.5, "s", dict), offered


def test_a_trial_bisects_open_loop_rates_from_the_saturation_burst(monkeypatch):
    """A server whose burst says 100 req/s and that meets the SLO up to 60: probes at 75 (missed), 37.5, 56.25."""
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: rate <= 60)
    result = TrialResult(1, "tpe", {}, "missed-slo")
    runner._levels(result)
    assert offered == [("closed", 256), ("open", 75.0), ("open", 37.5), ("open", 56.25)]
    assert result.status == "ok" and result.goodput_req_s == 56.25 and result.saturation_req_s == 100.0
    assert result.rate_req_s == 56.25
    assert result.usd_per_1m_output == pytest.approx(2.5 / (56.25 * 128 * 3600) * 1e6)
    offered.clear()
    runner.hint_req_s = 50.0  # the best so far: the first probe asks whether this one beats it by 5%
    runner._levels(result)
    assert offered == [("closed", 256), ("open", 52.5), ("open", 78.75), ("open", 65.625)]
    assert result.goodput_req_s == 52.5
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: False)
    runner._levels(result)
    assert result.status == "missed-slo" and "no level met the SLO" in result.reason
    assert [rate for _, rate in offered[1:]] == [75.0, 37.5, 18.75, 9.375, 4.688, 2.344]  # 3 probes, then 3 more


def test_a_trial_that_misses_the_hint_steps_down_near_it(monkeypatch):
    """Below a hint the trial is likely near the best so far: after the miss at 52.5 (5% above the hint of 50) the
    next probe is 0.75 x 52.5, not half of it, and the bisection then narrows between the two."""
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: mode == "open" and rate <= 40)
    runner.hint_req_s = 50.0
    result = TrialResult(2, "tpe", {}, "missed-slo")
    runner._levels(result)
    assert [rate for _, rate in offered[1:]] == [52.5, 39.375, 45.938]
    assert result.goodput_req_s == 39.375 and result.rate_req_s == 39.375


def test_the_rate_held_not_the_req_s_measured_is_what_the_next_trial_must_beat(monkeypatch):
    """A level offered 45 req/s measures 40.5 when its drain counts (0.9 x): the trial's goodput is 40.5 but the
    load it held is 45, and the next trial's first probe is 5% above 45 (47.25), not above 40.5 (42.5, less than
    the best had held: a configuration as good could then only tie or lose)."""
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: mode == "open" and rate <= 45, drained=0.9)
    runner.hint_req_s = 30.0 / 1.05
    first = TrialResult(0, "default", {}, "missed-slo")
    runner._levels(first)
    assert [rate for _, rate in offered[1:]] == [30.0, 45.0, 67.5, 56.25, 50.625]  # trial 0: two more bisections
    assert first.goodput_req_s == pytest.approx(40.5) and first.rate_req_s == 45.0
    assert probe_hint([first], 1) == 45.0 and probe_hint([first], 2) == 90.0
    older = TrialResult(1, "tpe", {}, "ok", goodput_req_s=50.0)  # recorded before rate_req_s: its goodput counts
    assert probe_hint([first, older], 1) == 50.0
    assert probe_hint([first, TrialResult(2, "tpe", {}, "ok", goodput_req_s=60.0, rate_req_s=80.0, gpus=2)], 1) == 45.0


def test_the_defaults_bisect_two_probes_further_than_the_other_trials(monkeypatch):
    """The same server (meets the SLO up to 60 req/s, burst 100): trial 1 stops at its 3 probes (75 missed, 37.5 and
    56.25 met: a bracket of 56.25-75), trial 0 goes on to 65.625 (missed) and 60.938 (missed): 56.25-60.938, so a
    later trial that holds 63 beats the defaults by a rate they were offered and missed."""
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: rate <= 60)
    other = TrialResult(1, "random", {}, "missed-slo")
    runner._levels(other)
    assert [rate for _, rate in offered[1:]] == [75.0, 37.5, 56.25]
    assert (other.rate_req_s, other.missed_rate_req_s) == (56.25, 75.0)
    offered.clear()
    defaults = TrialResult(0, "default", {}, "missed-slo")
    runner._levels(defaults)
    assert [rate for _, rate in offered[1:]] == [75.0, 37.5, 56.25, 65.625, 60.938]
    assert (defaults.rate_req_s, defaults.missed_rate_req_s) == (56.25, 60.938)  # the rates the levels were offered
    runner.plan = dataclasses.replace(runner.plan, probes=0)  # none asked for: the burst alone, defaults too
    offered.clear()
    runner._levels(TrialResult(0, "default", {}, "missed-slo"))
    assert offered == [("closed", 256)]


def test_the_first_trials_expected_load_counts_the_baselines_extra_probes():
    from qwenopt.serving.tune_trial import TrialPlan

    assert TrialPlan(probes=3, level_s=8).load_s == 32 and TrialPlan(probes=3, level_s=8).baseline_load_s == 48
    assert TrialPlan(probes=0, level_s=8).baseline_load_s == 8  # the burst alone: no baseline probes either


def test_a_strict_slo_far_below_saturation_gets_more_halvings(monkeypatch):
    """The server meets the SLO only up to 15 req/s: 75, 37.5, 18.75 miss, so the halving goes on; 9.375 meets,
    which earns one bisection above it (14.06, met), and the trial ends there."""
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: mode == "open" and rate <= 15)
    result = TrialResult(1, "random", {}, "missed-slo")
    runner._levels(result)
    assert [rate for _, rate in offered[1:]] == [75.0, 37.5, 18.75, 9.375, 14.062]
    assert result.status == "ok" and result.goodput_req_s == 14.062
    offered.clear()  # the first met level at the last planned probe also earns its bisection
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: mode == "open" and rate <= 30)
    runner._levels(result)
    assert [rate for _, rate in offered[1:]] == [75.0, 37.5, 18.75, 28.125]
    assert result.goodput_req_s == 28.125


def test_a_trial_climbs_past_a_burst_that_underestimates_the_server(monkeypatch):
    """The burst says 100 req/s (its 256 users miss the SLO) but the server meets it up to 140: 75 and 112.5 meet
    it, 168.75 misses; the best so far (120) is probed 5% above even though that is above the burst's figure."""
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: mode == "open" and rate <= 140)
    result = TrialResult(1, "tpe", {}, "missed-slo")
    runner._levels(result)
    assert offered == [("closed", 256), ("open", 75.0), ("open", 112.5), ("open", 168.75)]
    assert result.goodput_req_s == 112.5
    offered.clear()
    runner.hint_req_s = 120.0
    runner._levels(result)
    assert offered == [("closed", 256), ("open", 126.0), ("open", 189.0), ("open", 157.5)]
    assert result.goodput_req_s == 126.0


def test_level_verdict_names_the_p99_that_missed():
    row = {"status": "ok", "sent": 100, "completed": 100, "latency_p99_s": 2.5, "ttft_p99_ms": 90.0}
    assert level_verdict(row, {"e2e": 3.0, "ttft": 0.1}) is None
    assert "e2e" in level_verdict(row, {"e2e": 2.0})
    assert "ttft" in level_verdict(row, {"ttft": 0.05})
    assert "completed" in level_verdict({**row, "completed": 90}, {"e2e": 3.0})
    assert "client-bound" in level_verdict({**row, "status": "client-bound"}, {"e2e": 3.0})
    assert start_failure_status("ValueError: No available memory for the cache blocks") == "oom"
    assert start_failure_status("vllm serve exited with code 1: bad flag") == "start-failed"


FLAG_CASES = [
    ({"max_num_seqs": 128}, ["--max-num-seqs", "128"]),
    ({"max_num_batched_tokens": 4096}, ["--max-num-batched-tokens", "4096"]),
    ({"enable_chunked_prefill": False}, ["--no-enable-chunked-prefill"]),
    ({"gpu_memory_utilization": 0.95}, ["--gpu-memory-utilization", "0.95"]),
    ({"kv_cache_dtype": "fp8"}, ["--kv-cache-dtype", "fp8"]),
    ({"kv_cache_dtype": "auto"}, []),
    ({"linear_backend": "marlin"}, ["--linear-backend", "marlin"]),
    ({"cudagraph_mode": "PIECEWISE"}, ["--compilation-config", '{"cudagraph_mode": "PIECEWISE"}']),
    ({"enforce_eager": True}, ["--enforce-eager"]),
    ({"async_scheduling": False}, ["--no-async-scheduling"]),
    ({"enable_prefix_caching": False}, ["--no-enable-prefix-caching"]),
    ({"enable_prefix_caching": "default"}, []),  # None: the launcher's own setting is undone, vLLM decides
    ({"max_num_seqs": "default"}, []),
    ({"stream_interval": 4}, ["--stream-interval", "4"]),
    ({"stream_interval": "default"}, []),
    ({"performance_mode": "interactivity"}, ["--performance-mode", "interactivity"]),
    ({"performance_mode": "default"}, []),
    ({"api_server_count": 2}, ["--api-server-count", "2"]),
    ({"api_server_count": "default"}, []),
]


@pytest.mark.parametrize("config, argv", FLAG_CASES)
def test_each_knob_becomes_its_vllm_flag(config, argv):
    assert cli_flags(engine_args_of(config)) == argv


def test_default_prefix_caching_overrides_the_launchers_off():
    assert engine_args_of({"enable_prefix_caching": "default"}) == {"enable_prefix_caching": None}


DRAFTERS = {"eagle3": "/head", "draft_model": "/draft"}


def test_speculation_uses_synthetic_acceptance_rates():
    args = engine_args_of({"spec_acceptance": 0.8, "num_speculative_tokens": 3, "spec_method": "draft_model"},
                          DRAFTERS)
    spec = args["speculative_config"]
    assert spec["method"] == "draft_model" and spec["model"] == "/draft" and spec["num_speculative_tokens"] == 3
    assert spec["rejection_sample_method"] == "synthetic"
    assert spec["synthetic_acceptance_rates"] == [0.8, 0.64, 0.512]  # P(first i+1 accepted), non-increasing
    eagle = engine_args_of({"spec_acceptance": 0.6, "num_speculative_tokens": 2, "spec_method": "eagle3"}, DRAFTERS)
    assert eagle["speculative_config"]["method"] == "eagle3" and eagle["speculative_config"]["model"] == "/head"
    assert engine_args_of({"spec_acceptance": "off", "num_speculative_tokens": 3, "spec_method": "eagle3"}) == {}
    with pytest.raises(QwenoptError, match="drafter's folder"):
        engine_args_of({"spec_acceptance": 0.8, "num_speculative_tokens": 3, "spec_method": "eagle3"})


def test_vllms_own_parser_takes_every_knobs_flags(monkeypatch):
    """Where vLLM is importable: `vllm serve`'s parser accepts each flag and reads the value the knob meant."""
    pytest.importorskip("vllm")
    import vllm.platforms
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        parser = make_arg_parser(FlexibleArgumentParser())
    except RuntimeError:  # no GPU platform here: the parser's defaults need one; the CPU platform's will do
        from vllm.platforms.cpu import CpuPlatform

        monkeypatch.setattr(vllm.platforms, "_current_platform", CpuPlatform())
        parser = make_arg_parser(FlexibleArgumentParser())
    for config, argv in FLAG_CASES:
        parsed = vars(parser.parse_args(["model", *argv]))
        for name, value in engine_args_of(config).items():
            if name == "compilation_config":
                mode = parsed[name]["cudagraph_mode"] if isinstance(parsed[name], dict) else parsed[name].cudagraph_mode
                assert mode.name == value["cudagraph_mode"]
            elif value is not None:
                assert parsed[name] == value, name
    for method in ("eagle3", "draft_model"):
        spec = engine_args_of({"spec_acceptance": 0.6, "num_speculative_tokens": 2, "spec_method": method}, DRAFTERS)
        parsed = vars(parser.parse_args(["model", *cli_flags(spec)]))
        assert parsed["speculative_config"]["synthetic_acceptance_rates"] == [0.6, 0.36]
        assert parsed["speculative_config"]["method"] == method and parsed["speculative_config"]["model"] == \
            DRAFTERS[method]
    from vllm.config import SpeculativeConfig  # vLLM's own check of the rates: length, range, non-increasing

    assert SpeculativeConfig._resolve_synthetic_acceptance_rates(2, [0.6, 0.36], None) == [0.6, 0.36]


def test_space_narrowing_and_its_errors():
    space = parse_space("max_num_seqs=64,128;kv_cache_dtype=fp8", int4=True, quant=None)
    assert space["max_num_seqs"] == (64, 128) and space["kv_cache_dtype"] == ("fp8",)
    assert space["linear_backend"] == ("auto",) and space["quantization"] == ("awq",)  # the rest at its default
    assert grid_size(space) == 2
    space = parse_space(None, int4=True, quant=None)
    assert space["linear_backend"] == ("auto", "machete", "marlin") and space["quantization"] == ("awq", "gptq")
    assert "linear_backend" not in parse_space(None, int4=False, quant=None)
    assert parse_space(None, int4=True, quant="gptq")["quantization"] == ("gptq",)
    spec = parse_space(None, int4=False, quant=None, spec_acceptance=[0.6, 0.8])
    assert spec["spec_acceptance"] == ("off", 0.6, 0.8) and spec["spec_method"] == ("eagle3",)
    both = parse_space("spec_method=eagle3,draft_model", int4=False, quant=None, spec_acceptance=[0.8])
    assert both["spec_method"] == ("eagle3", "draft_model") and both["num_speculative_tokens"] == (2, 3, 4)
    for text, message in [("bogus=1", "unknown knob"), ("linear_backend=marlin", "vllm-int4 only"),
                          ("kv_cache_dtype=int3", "not a value"), ("max_num_seqs=-4", "not a value"),
                          ("max_num_seqs", "KNOB=V1,V2"), ("spec_method=eagle3", "needs --spec-acceptance"),
                          ("performance_mode=fast", "one of balanced, interactivity, throughput"),
                          ("api_server_count=0", "not a value")]:
        with pytest.raises(QwenoptError, match=message):
            parse_space(text, int4=False, quant=None)


def test_grid_size_counts_speculation_once_when_off():
    space = {"max_num_seqs": ("default", 64), "spec_acceptance": ("off", 0.6, 0.8), "num_speculative_tokens": (2, 3)}
    assert grid_size(space) == 2 * (1 + 2 * 2)
    space["spec_method"] = ("eagle3", "draft_model")
    assert grid_size(space) == 2 * (1 + 2 * 2 * 2)
    assert math.prod(len(v) for v in SPACE.values()) == grid_size(SPACE)
    assert len(list(itertools.product(*SPACE.values()))) == 360


def test_a_low_rate_level_lasts_until_enough_requests_have_arrived(monkeypatch):
    """8 s levels with at least 400 requests: 10 req/s runs 40 s, 100 req/s the 8 s; the burst keeps 8 s; with
    level_requests 0 every level is 8 s. The run's own duration is left as it was."""
    from qwenopt.serving import tune_trial
    from qwenopt.serving.sweep import LoadRun
    from qwenopt.serving.tune_trial import TrialPlan, TrialRunner

    seen = []

    def run_one(run, number, mode, value, begin, finish, measure=None):
        seen.append((mode, value, run.duration_s))
        return [{"class": "all"}]

    monkeypatch.setattr(tune_trial, "run_one", run_one)
    run = LoadRun(target=None, workload=None, mode="closed", values=[256], out=None, duration_s=8.0)
    runner = TrialRunner(run, None, None, TrialPlan(level_s=8.0, level_requests=400), {"e2e": 2.0}, 2.5, "s", dict)
    for mode, value in (("closed", 256), ("open", 10.0), ("open", 100.0)):
        runner._level(1, mode, value)
    runner.plan = TrialPlan(level_s=8.0, level_requests=0)
    runner._level(1, "open", 10.0)
    assert seen == [("closed", 256, 8.0), ("open", 10.0, 40.0), ("open", 100.0, 8.0), ("open", 10.0, 8.0)]
    assert run.duration_s == 8.0


def test_the_outcome_names_the_rate_each_figure_was_offered():
    from qwenopt.serving.tune_view import outcome_lines

    best = TrialResult(0, "default", {}, "ok", goodput_req_s=40.6, rate_req_s=45.1, latency_p99_s=1.973,
                       usd_per_1m_output=0.1336)
    older = TrialResult(1, "tpe", {}, "ok", goodput_req_s=29.5, latency_p99_s=1.5, usd_per_1m_output=0.18)
    text = "\n".join(outcome_lines([best, older], "goodput", 48, 0))
    assert "winner: trial 0, 40.60 req/s (offered 45.10) at P99 1.973 s" in text
    assert "trial 1: 29.50 req/s at P99 1.500 s" in text  # a trial recorded without the rate: no figure invented
    assert "slowest 1%" not in text  # trials recorded before the tail split: nothing shown
    best.tail, older.tail = "0.094 / 0.752 / 1.170", "0.060 / 0.480 / 0.250"
    lines = outcome_lines([best, older], "goodput", 48, 0)
    assert lines[lines.index("  config: vLLM defaults") + 1] == \
        "  slowest 1% at that level, TTFT / decode / stalls: 0.094 / 0.752 / 1.170 s"
    winner_1 = outcome_lines([replace(best, goodput_req_s=20.0), older], "goodput", 48, 0)
    assert [line for line in winner_1 if "slowest 1%" in line] == [  # the winner's, then the defaults' below it
        "  slowest 1% at that level, TTFT / decode / stalls: 0.060 / 0.480 / 0.250 s",
        "  slowest 1% at that level, TTFT / decode / stalls: 0.094 / 0.752 / 1.170 s"]


def test_a_resumed_trial_ran_the_knobs_added_since_at_their_default():
    """Trials recorded before a knob existed name none of it: the search counts them at its default, so it neither
    measures their configurations again nor leaves them out of TPE's model."""
    pytest.importorskip("optuna")
    space = {"max_num_seqs": ("default", 64), "performance_mode": ("default",), "api_server_count": ("default",)}
    old = [TrialResult(0, "default", {"max_num_seqs": "default"}, "ok", goodput_req_s=10.0, wall_s=1.0),
           TrialResult(1, "random", {"max_num_seqs": 64}, "ok", goodput_req_s=12.0, wall_s=1.0)]
    asked = []
    said = []
    results = search(space, SearchSettings("s", trials=3), lambda n, step, config: asked.append(config),
                     finished=old, say=said.append)
    assert asked == [] and "every configuration the sampler proposes has been measured; stopping" in said
    assert [r.config for r in results] == [{"max_num_seqs": "default", "performance_mode": "default",
                                            "api_server_count": "default"},
                                           {"max_num_seqs": 64, "performance_mode": "default",
                                            "api_server_count": "default"}]


def test_knobs_added_later_stay_out_of_the_study_key_at_their_default():
    from qwenopt.serving.tune_space import key_space

    fixed = parse_space("max_num_seqs=default,128", int4=False, quant=None)
    assert "performance_mode" not in key_space(fixed) and "api_server_count" not in key_space(fixed)
    assert key_space(fixed)["max_num_seqs"] == ["default", 128] and key_space(fixed)["kv_cache_dtype"] == ["auto"]
    varied = parse_space("performance_mode=default,throughput", int4=False, quant=None)
    assert key_space(varied)["performance_mode"] == ["default", "throughput"]
    assert key_space(parse_space("api_server_count=2", int4=False, quant=None))["api_server_count"] == [2]


def test_a_gain_inside_the_defaults_open_bracket_is_called_unresolved():
    """The defaults met 45.1 req/s offered and missed 56.4; a winner that held 47.4 lies between: the search has not
    told the two apart. One that held 60 is past the bracket: a gain of at least 60 / 56.375 - 1 = +6.4% in rate
    offered. Defaults that missed no rate leave the general caveat."""
    from qwenopt.serving.tune_view import outcome_lines

    default = TrialResult(0, "default", {}, "ok", goodput_req_s=40.6, rate_req_s=45.1, missed_rate_req_s=56.375,
                          latency_p99_s=1.97, usd_per_1m_output=0.13)
    close = TrialResult(3, "tpe", {"stream_interval": 4}, "ok", goodput_req_s=42.6, rate_req_s=47.36,
                        latency_p99_s=1.9, usd_per_1m_output=0.12)
    text = " ".join(" ".join(outcome_lines([default, close], "goodput", 48, 0)).split())
    assert "the defaults met 45.10 req/s offered and missed 56.38; the winner's 47.36 lies between" in text
    far = TrialResult(3, "tpe", {"stream_interval": 4}, "ok", goodput_req_s=55.0, rate_req_s=60.0,
                      latency_p99_s=1.9, usd_per_1m_output=0.1)
    text = " ".join(" ".join(outcome_lines([default, far], "goodput", 48, 0)).split())
    assert "lies between" not in text
    assert "the winner met 60.00 req/s offered, a rate the defaults missed (at 56.38): at least +6.4% in rate" in text
    unbounded = TrialResult(0, "default", {}, "ok", goodput_req_s=40.6, rate_req_s=45.1, latency_p99_s=1.97,
                            usd_per_1m_output=0.13)
    text = " ".join(" ".join(outcome_lines([unbounded, far], "goodput", 48, 0)).split())
    assert "at least" not in text and "each figure is one short level of one start" in text


def test_a_trials_bracket_is_its_best_met_level_and_the_lowest_miss_above_it():
    """Hand-made levels of one trial: the burst (closed, no rate) met at 30 req/s measured; 34 offered met (31.0
    measured), 51 and 43 missed, 20 missed (a P99 blip below the best: not the bracket's top). Best 34 -> 43."""
    import pandas as pd

    from qwenopt.serving.tune_trial import bracket, fill_brackets

    levels = pd.DataFrame({
        "trial": [2] * 5, "mode": ["closed", "open", "open", "open", "open"],
        "rate": [math.nan, 34.0, 51.0, 43.0, 20.0], "arrived_req_s": [60.0, 34.5, 51.2, 43.1, 20.1],
        "req_s": [30.0, 31.0, 45.0, 38.0, 19.0],
        "trial_status": ["ok", "ok", "missed-slo", "missed-slo", "missed-slo"]})
    best, offered, missed = bracket(levels)
    assert best["rate"] == 34.0 and offered == 34.0 and missed == 43.0
    none_met = levels.assign(trial_status="missed-slo")
    best, offered, missed = bracket(none_met)
    assert best is None and math.isnan(offered) and missed == 20.0
    old = TrialResult(2, "random", {}, "ok", goodput_req_s=31.0)  # recorded before the bracket was kept
    kept = TrialResult(2, "random", {}, "ok", goodput_req_s=31.0, rate_req_s=33.0, missed_rate_req_s=50.0)
    failed = TrialResult(2, "random", {}, "missed-slo")
    fill_brackets([old, kept, failed], levels)
    assert (old.rate_req_s, old.missed_rate_req_s) == (34.0, 43.0)
    assert (kept.rate_req_s, kept.missed_rate_req_s) == (33.0, 50.0) and math.isnan(failed.rate_req_s)


def test_a_trial_records_the_rate_that_bounds_its_limit_from_above(monkeypatch):
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: rate <= 60)
    result = TrialResult(1, "tpe", {}, "missed-slo")
    runner._levels(result)  # 75 missed, 37.5 and 56.25 met: the limit lies in [56.25, 75)
    assert (result.rate_req_s, result.missed_rate_req_s) == (56.25, 75.0)
    runner, offered = fake_trial(monkeypatch, lambda mode, rate: True)
    runner._levels(result)  # the burst met the SLO: no level missed above it
    assert math.isnan(result.missed_rate_req_s)
