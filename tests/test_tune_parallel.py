"""tune --launch on several GPUs: tensor_parallel_size / pipeline_parallel_size as knobs where the GPUs exist (a faked
GPU count), refused where they do not, the flags each layout becomes, and goodput compared per GPU."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.errors import QwenoptError
from qwenopt.results import read_jsonl
from qwenopt.serving.tune_online import SearchSettings, probe_hint, search, winner
from qwenopt.serving.tune_space import defaults, engine_args_of, gpus_of, grid_size, parse_space
from qwenopt.serving.tune_trial import TrialResult
from qwenopt.serving.tune_view import outcome_lines

pytest.importorskip("optuna")
HEADS = 28  # Qwen2.5-7B's attention heads: vLLM needs tensor_parallel_size to divide them


def test_one_gpu_offers_no_parallel_knob_and_refuses_a_space_that_asks_for_more():
    assert "tensor_parallel_size" not in parse_space(None, int4=False, quant=None, gpus=1, heads=HEADS)
    assert "tensor_parallel_size" not in parse_space(None, int4=False, quant=None, gpus=0, heads=HEADS)
    with pytest.raises(QwenoptError, match="up to 2 needs 2 GPUs; 1 visible"):
        parse_space("tensor_parallel_size=1,2", int4=False, quant=None, gpus=1, heads=HEADS)
    with pytest.raises(QwenoptError, match="needs 2 GPUs; 1 visible"):
        parse_space(None, int4=False, quant=None, gpus=1, heads=HEADS, tp=2)  # --tp 2 on one GPU
    assert parse_space("tensor_parallel_size=1", int4=False, quant=None, gpus=1)["tensor_parallel_size"] == (1,)


def test_several_gpus_offer_the_tensor_parallel_sizes_that_fit_the_gpus_and_the_heads():
    assert parse_space(None, int4=False, quant=None, gpus=2, heads=HEADS)["tensor_parallel_size"] == (1, 2)
    assert parse_space(None, int4=False, quant=None, gpus=4, heads=HEADS)["tensor_parallel_size"] == (1, 2, 4)
    eight = parse_space(None, int4=False, quant=None, gpus=8, heads=HEADS)
    assert eight["tensor_parallel_size"] == (1, 2, 4)  # 8 does not divide 28 heads
    assert "pipeline_parallel_size" not in eight  # only where --space asks for it
    assert parse_space(None, int4=False, quant=None, gpus=8, heads=32)["tensor_parallel_size"] == (1, 2, 4, 8)
    assert parse_space(None, int4=False, quant=None, gpus=4, heads=HEADS, tp=2)["tensor_parallel_size"] == (2,)
    assert parse_space(None, int4=False, quant=None, gpus=4, heads=HEADS, tp=1)["tensor_parallel_size"] == (1,)
    assert "tensor_parallel_size" not in parse_space(None, int4=False, quant=None, gpus=1, tp=1)


def test_a_space_of_layouts_must_fit_the_visible_gpus():
    both = "tensor_parallel_size=1,2;pipeline_parallel_size=1,2"
    space = parse_space(both, int4=False, quant=None, gpus=4, heads=HEADS)
    assert space["tensor_parallel_size"] == (1, 2) and space["pipeline_parallel_size"] == (1, 2)
    assert grid_size(space) == 4 and defaults(space)["tensor_parallel_size"] == 1
    with pytest.raises(QwenoptError, match="up to 4 needs 4 GPUs; 2 visible"):
        parse_space(both, int4=False, quant=None, gpus=2, heads=HEADS)
    for text, message in [("tensor_parallel_size=3", "does not divide the model's 28 attention heads"),
                          ("pipeline_parallel_size=0", "not a value"), ("tensor_parallel_size=two", "not a value")]:
        with pytest.raises(QwenoptError, match=message):
            parse_space(text, int4=False, quant=None, gpus=8, heads=HEADS)
    with pytest.raises(QwenoptError, match="give one"):
        parse_space("tensor_parallel_size=2,4", int4=False, quant=None, gpus=4, heads=HEADS, tp=2)


def test_a_layout_is_the_servers_tp_and_pp_not_an_engine_arg():
    config = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "max_num_seqs": 64}
    assert engine_args_of(config) == {"max_num_seqs": 64}  # tp/pp go to start_server, which counts the row's GPUs
    assert gpus_of(config) == 4 and gpus_of({}, tp=2) == 2 and gpus_of({"max_num_seqs": 64}) == 1
    from qwenopt.serving.tune_space import changed

    assert changed({**config, "tensor_parallel_size": 1, "pipeline_parallel_size": 1}) == {"max_num_seqs": 64}
    assert changed(config)["tensor_parallel_size"] == 2


def _serve_argv(tp: int, pp: int) -> list[str]:
    """`vllm serve`'s argv for vllm-int4 (AWQ, random weights) at a layout, as the launcher writes it."""
    from qwenopt.bench import BenchOptions, plan_sweep
    from qwenopt.serving.launcher import serve_command

    plan = plan_sweep(BenchOptions(regime="vllm-int4", model="qwen2.5-7b", weights="random", quant="awq", tp=tp,
                                   pp=pp, batch="1", input_len="128", output_len="16", device="cuda"))
    return serve_command(plan.spec, plan.engine_options(), "/model", 8000)


def test_each_layout_becomes_vllms_parallel_flags(monkeypatch):
    import qwenopt.bench
    import qwenopt.regimes

    monkeypatch.setattr(qwenopt.regimes, "missing_packages", lambda spec: [])
    monkeypatch.setattr(qwenopt.bench, "gpu_count", lambda: 4)
    from .helpers import flag

    argv = _serve_argv(2, 2)
    assert flag(argv, "--tensor-parallel-size") == "2" and flag(argv, "--pipeline-parallel-size") == "2"


def test_vllms_own_parser_reads_the_layout(monkeypatch):
    """Where vLLM is importable: `vllm serve`'s parser takes the launcher's parallel flags with the sizes meant."""
    pytest.importorskip("vllm")
    import qwenopt.bench
    import qwenopt.regimes
    import vllm.platforms
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    monkeypatch.setattr(qwenopt.regimes, "missing_packages", lambda spec: [])
    monkeypatch.setattr(qwenopt.bench, "gpu_count", lambda: 4)
    try:
        parser = make_arg_parser(FlexibleArgumentParser())
    except RuntimeError:  # no GPU platform here: the CPU platform's defaults will do
        from vllm.platforms.cpu import CpuPlatform

        monkeypatch.setattr(vllm.platforms, "_current_platform", CpuPlatform())
        parser = make_arg_parser(FlexibleArgumentParser())
    argv = _serve_argv(2, 2)
    parsed = vars(parser.parse_args(argv[argv.index("serve") + 1:]))
    assert parsed["tensor_parallel_size"] == 2 and parsed["pipeline_parallel_size"] == 2


def test_goodput_is_compared_per_gpu():
    one = TrialResult(0, "default", {"tensor_parallel_size": 1}, "ok", goodput_req_s=12.0, latency_p99_s=1.5,
                      usd_per_1m_output=1.0, gpus=1)
    two = TrialResult(1, "tpe", {"tensor_parallel_size": 2}, "ok", goodput_req_s=20.0, latency_p99_s=1.2,
                      usd_per_1m_output=1.2, gpus=2)
    assert two.score("goodput") == 10.0 and one.score("goodput") == 12.0
    assert winner([one, two]).trial == 0  # 20 req/s on 2 GPUs is less per GPU than 12 on one
    doubled = TrialResult(2, "tpe", {"tensor_parallel_size": 2}, "ok", goodput_req_s=24.0, latency_p99_s=1.5,
                          usd_per_1m_output=1.0, gpus=2)
    assert doubled.score("goodput") == one.score("goodput")  # twice the goodput on twice the GPUs: no gain
    assert two.score("cost") == pytest.approx(1 / 1.2)  # the cost already pays for both GPUs (matrix.costs)
    lines = outcome_lines([one, two, TrialResult(3, "tpe", {}, "ok", goodput_req_s=30.0, latency_p99_s=1.0,
                                                 usd_per_1m_output=0.9, gpus=2)], "goodput", 4, 0)
    text = "\n".join(lines)
    assert "winner: trial 3" in text and "on 2 GPUs (15.00 per GPU)" in text and "+25.0% goodput per GPU" in text
    assert "re-measure both on fresh starts" in text  # a gain over the defaults comes with its caveat
    alone = "\n".join(outcome_lines([one, two], "goodput", 4, 0))
    assert "winner: trial 0" in alone and "re-measure" not in alone  # the defaults won: nothing to re-measure


def test_a_trials_first_probe_asks_to_beat_the_best_goodput_per_gpu_at_its_own_gpus():
    done = [TrialResult(0, "default", {}, "ok", goodput_req_s=12.0, gpus=1),
            TrialResult(1, "tpe", {}, "ok", goodput_req_s=20.0, gpus=2), TrialResult(2, "tpe", {}, "oom", gpus=4)]
    assert probe_hint(done, 1) == 12.0 and probe_hint(done, 2) == 24.0 and probe_hint(done, 4) == 48.0
    assert probe_hint(done[2:], 1) is None


def test_the_search_prefers_the_layout_with_the_most_goodput_per_gpu():
    """A known surface: tensor parallelism scales goodput by 1.6x per doubling, so per GPU one GPU is best."""
    space = {"tensor_parallel_size": (1, 2, 4), "max_num_seqs": ("default", 64, 128, 256)}
    effect = {"default": 10.0, 64: 8.0, 128: 11.0, 256: 12.0}

    def measure(number, step, config):
        tp = config["tensor_parallel_size"]
        goodput = effect[config["max_num_seqs"]] * 1.6 ** (tp.bit_length() - 1)
        return TrialResult(number, step, config, "ok", goodput_req_s=goodput, latency_p99_s=1.0, gpus=tp,
                           wall_s=1.0)

    results = search(space, SearchSettings("s", trials=12, seed=0), measure, say=lambda text: None)
    assert winner(results).config == {"tensor_parallel_size": 1, "max_num_seqs": 256}
    assert max(results, key=lambda r: r.goodput_req_s).config["tensor_parallel_size"] > 1  # more req/s, not per GPU


def fake_parallel_server(started: list):
    """start_server's stand-in that records each trial's layout and reports its GPUs, as the real one does."""
    from .stream_server import serve_in_thread

    def start(stack, launch, *, engine_args, quant, tp, pp, **_):
        started.append((tp, pp))
        url, _ = stack.enter_context(serve_in_thread(ttft_s=0.002, gap_s=0.001))
        server = SimpleNamespace(base_url=url, model="fake-qwen", dialect="vllm", startup_s=0.01,
                                 command=["python", "-m", "vllm.entrypoints.cli.main", "serve", "/m",
                                          "--tensor-parallel-size", str(tp)])
        return server, {"regime": launch, "model": "qwen2.5-7b", "weights": "random", "quant": quant,
                        "serve_mode": "fcfs", "tp": tp, "pp": pp, "gpus": tp * pp,
                        "engine_args": json.dumps(engine_args, sort_keys=True), "startup_s": 0.01}

    return start


TUNE = ["tune", "--launch", "vllm-fp16", "--weights", "random", "--slo", "e2e=2s", "--input-len", "8",
        "--output-len", "3", "--level-duration", "0.4", "--burst-users", "4", "--probes", "0",
        "--max-send-lag-ms", "5000", "--out", "tune.csv"]


def test_tune_launch_searches_the_layout_on_a_faked_two_gpu_host(tmp_results, monkeypatch):
    import qwenopt.cli.load
    import qwenopt.regimes

    started = []
    monkeypatch.setattr(qwenopt.regimes, "gpu_count", lambda: 2)
    monkeypatch.setattr(qwenopt.cli.load, "start_server", fake_parallel_server(started))
    result = CliRunner().invoke(app, [*TUNE, "--space", "tensor_parallel_size=1,2;max_num_seqs=default,64",
                                      "--trials", "4"])
    assert result.exit_code == 0, result.output
    trials = read_jsonl(tmp_results / "tune.trials.jsonl")
    assert started[0] == (1, 1) and (2, 1) in started  # trial 0 on vLLM's one GPU; the search tried two
    frame = pd.read_csv(tmp_results / "tune.csv")
    for trial, layout in zip(trials, started):
        assert trial["gpus"] == layout[0] and set(frame[frame["trial"] == trial["trial"]]["gpus"]) == {layout[0]}
    assert "a full grid of this space is 4 configurations" in result.output.replace("\n", " ")


def test_tune_launch_refuses_a_layout_beyond_the_visible_gpus(tmp_results, monkeypatch):
    import qwenopt.regimes

    monkeypatch.setattr(qwenopt.regimes, "gpu_count", lambda: 2)
    result = CliRunner().invoke(app, [*TUNE, "--space", "tensor_parallel_size=4"])
    assert result.exit_code == 2 and "error: --space: tensor_parallel_size x pipeline_parallel_size up to 4 " \
                                      "needs 4 GPUs; 2 visible" in " ".join(result.output.split()), result.output
    assert not (tmp_results / "tune.csv").exists()
