"""The analysis scripts over a run's samples: benchmarks/tail_breakdown.py (where the slowest requests spent their
time) and benchmarks/requests_table.py (one row per request), checked on hand-made samples."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample(index, times, outcome="ok", warmup=False):
    return {"index": index, "cls": "all", "warmup": warmup, "intended_s": index * 0.1, "send_lag_s": 0.0,
            "input_len": 8, "output_len": len(times), "outcome": outcome, "ttft_s": times[0] if times else None,
            "e2e_s": times[-1] if times else None, "token_times_s": times}


SAMPLES = [sample(0, [0.10, 0.11, 0.12, 0.13]),  # gaps 10, 10, 10 ms
           sample(1, [0.10, 0.11, 0.15, 0.16]),  # gaps 10, 40, 10 ms: one stall of 30 ms over the 10 ms pace
           sample(2, [0.10, 0.50, 0.90, 1.30], warmup=True),  # neither counts
           sample(3, [], outcome="timeout")]


def test_the_tail_splits_into_first_token_decode_and_stalls():
    got = _script("tail_breakdown").breakdown(SAMPLES, tail=0.5, stall=2.0)
    # median gap of the two measured requests' six gaps: 10 ms; the tail (E2E >= its median 0.145 s) is request 1
    assert got["requests"] == 2 and got["tail requests"] == 1
    assert got["median gap ms"] == pytest.approx(10.0)
    assert got["tail E2E s"] == pytest.approx(0.16) and got["TTFT s"] == pytest.approx(0.10)
    assert got["decode s"] == pytest.approx(0.03) and got["stalls s"] == pytest.approx(0.03) and got["stalls"] == 1
    assert _script("tail_breakdown").breakdown([SAMPLES[3]], 0.01, 2.0) == {}  # nothing measured: nothing to split


def test_the_request_table_names_each_requests_trial_by_level_not_by_run(tmp_path):
    """One tune process keeps its run_id across trials and numbers each trial's levels from 1 again: a level is its
    run_id and timestamp."""
    levels = [{"run_id": "r", "timestamp": "t1", "level": 1, "mode": "open", "rate": 4.0, "samples": SAMPLES[:2]},
              {"run_id": "r", "timestamp": "t2", "level": 1, "mode": "open", "rate": 4.0, "samples": SAMPLES[:1]}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(level) + "\n" for level in levels))
    pd.DataFrame({"run_id": ["r", "r", "r"], "timestamp": ["t1", "t1", "t2"], "trial": [0, 0, 1]}).to_csv(
        tmp_path / "rows.csv", index=False)
    frame = _script("requests_table").table(str(tmp_path / "s.jsonl"), str(tmp_path / "rows.csv"))
    assert list(frame["trial"]) == [0, 0, 1] and list(frame["e2e_s"]) == [0.13, 0.16, 0.13]
    assert "token_times_s" not in frame


def test_the_spec_load_table_names_the_rate_where_speculation_stops_paying(tmp_path):
    """Hand-made spec-load rows: no speculation and an EAGLE-3 head at an assumed acceptance, each at 4 / 16 / 32 req/s
    (seed 0). The head's mean E2E is 0.5x, 0.8x and then 1.25x the base's: it stops paying from 32 req/s, where its
    P99 (2.5 s) also misses the 2 s SLO."""
    from qwenopt.results import append_csv, read_csv
    from qwenopt.schema import LOAD_COLUMNS
    from tests.test_matrix_online import level

    spec = json.dumps({"speculative_config": {"method": "eagle3", "num_speculative_tokens": 2,
                                              "rejection_sample_method": "synthetic",
                                              "synthetic_acceptance_rates": [0.8, 0.64]}})
    for rate, base_mean, spec_mean in ((4, 1.0, 0.5), (16, 1.0, 0.8), (32, 1.6, 2.0)):
        for args, mean in ((None, base_mean), (spec, spec_mean)):
            row = level("vllm-int4", p99=mean * 1.25, req_s=rate * 0.95, rate=rate, quant="awq", mean=mean)
            append_csv(tmp_path / "spec_load.csv", {**row, "engine_args": args, "seed": 0, "tpot_p50_ms": mean * 8},
                       LOAD_COLUMNS)
    module = _script("spec_load_table")
    rows = read_csv(tmp_path / "spec_load.csv")
    assert list(module.names(module.levels(rows)).values()) == ["none", "spec1"]
    assert "ASSUMED acceptance" in next(iter(set(module.levels(rows)["config"]) - {module.BASE}))
    frame, stops = module.table(rows, slo_s=2.0)
    assert list(frame["rate"]) == [4.0, 16.0, 32.0]
    assert list(frame["spec1 / none E2E mean"]) == pytest.approx([0.5, 0.8, 1.25])
    assert list(frame["spec1 SLO"]) == ["met", "met", "missed"] and list(frame["none SLO"]) == ["met"] * 3
    assert stops == {"spec1": 32.0}
    assert "| seed | rate | none E2E mean s |" in module.markdown(frame)
    # a second round (seed 1) where the head already lost at 16 req/s: the lowest rate over both rounds counts
    for args, mean in ((None, 1.0), (spec, 1.1)):
        row = level("vllm-int4", p99=mean * 1.25, req_s=15.2, rate=16, quant="awq", mean=mean)
        append_csv(tmp_path / "spec_load.csv", {**row, "engine_args": args, "seed": 1, "tpot_p50_ms": mean * 8},
                   LOAD_COLUMNS)
    frame, stops = module.table(read_csv(tmp_path / "spec_load.csv"), slo_s=2.0)
    assert list(zip(frame["seed"], frame["rate"])) == [(0, 4.0), (0, 16.0), (0, 32.0), (1, 16.0)]
    assert stops == {"spec1": 16.0}


def test_the_committed_h200_spec_load_reads_as_the_readme_says():
    """results/h200/tune/v2/spec_load.csv (H200): the EAGLE-3 head at an ASSUMED 0.8 against no speculation, 4-48
    req/s; README's table: head / none mean E2E 0.342/0.565 = 0.61 at 4 req/s, 1.109/1.225 = 0.91 at 48, and below
    1 at every rate, so no rate where it stops paying."""
    from qwenopt.results import read_csv

    module = _script("spec_load_table")
    frame, stops = module.table(read_csv(REPO / "results/h200/tune/v2/spec_load.csv"), slo_s=2.0)
    assert list(frame["rate"]) == [4.0, 8.0, 16.0, 24.0, 32.0, 40.0, 48.0]
    ratio = list(frame["spec1 / none E2E mean"])
    assert ratio[0] == pytest.approx(0.342 / 0.565, abs=0.002) and ratio[-1] == pytest.approx(1.109 / 1.225, abs=0.002)
    assert max(ratio) < 1 and stops == {"spec1": None}
    assert set(frame["spec1 SLO"]) == {"met"} and set(frame["none SLO"]) == {"met"}
    # the 48 req/s level ended before its queue settled: 34.6 req/s completed of 43.1 arrived (README)
    last = frame.iloc[-1]
    assert (round(last["none req/s"], 1), round(last["arrived req/s"], 1)) == (34.6, 43.1)


def test_the_spec_load_table_averages_repeated_starts_and_keeps_cards_apart(tmp_path):
    """Hand-made: on card A no speculation ran twice at 40 req/s (mean E2E 1.2 and 1.6 s) and the head once (1.0 s);
    on card B only no speculation (2.0 s). The head's ratio is over none's average on its own card: 1.0 / 1.4."""
    from qwenopt.results import append_csv, read_csv
    from qwenopt.schema import LOAD_COLUMNS
    from tests.test_matrix_online import level

    spec = json.dumps({"speculative_config": {"method": "eagle3", "num_speculative_tokens": 2,
                                              "rejection_sample_method": "synthetic",
                                              "synthetic_acceptance_rates": [0.8, 0.64]}})
    starts = (("a1", "GPU-aaaa0001", None, 1.2, 1.9), ("a2", "GPU-aaaa0001", None, 1.6, 2.3),
              ("a3", "GPU-aaaa0001", spec, 1.0, 1.5), ("b1", "GPU-bbbb0002", None, 2.0, 2.6))
    for run_id, card, args, mean, p99 in starts:
        row = level("vllm-int4", p99=p99, req_s=38.0, rate=40, quant="awq", mean=mean)
        append_csv(tmp_path / "s.csv", {**row, "run_id": run_id, "gpu_uuid": card, "engine_args": args, "seed": 0,
                                        "tpot_p50_ms": mean * 8}, LOAD_COLUMNS)
    module = _script("spec_load_table")
    frame, stops = module.table(read_csv(tmp_path / "s.csv"), slo_s=2.0)
    assert list(frame["card"]) == ["aaaa0001", "bbbb0002"]
    first = frame.iloc[0]
    assert first["none E2E mean s"] == pytest.approx(1.4) and first["none E2E mean range s"] == "1.200-1.600"
    assert first["none E2E P99 s"] == pytest.approx(2.1) and first["none SLO"] == "1/2 met"
    assert first["spec1 / none E2E mean"] == pytest.approx(1.0 / 1.4) and first["spec1 SLO"] == "met"
    assert frame.iloc[1]["none E2E mean s"] == pytest.approx(2.0) and pd.isna(frame.iloc[1]["spec1 E2E mean s"])
    assert stops == {"spec1": None}


def test_the_committed_h200_high_load_ladder_reads_as_the_readme_says():
    """results/h200/tune/v2/spec_load_hi*.csv (H200): 40-72 req/s, 400 requests a level. On the card of six starts
    the head at an ASSUMED 0.8 (two starts) and at 0.6 (one) kept mean E2E below none's average (three starts) at
    every rate, up to 72 req/s offered where every configuration completed 55-59 req/s; README's table."""
    from qwenopt.results import read_csv

    module = _script("spec_load_table")
    paths = sorted((REPO / "results/h200/tune/v2").glob("spec_load_hi*.csv"))
    rows = pd.concat([read_csv(p) for p in paths], ignore_index=True)
    frame, stops = module.table(rows, slo_s=2.0)
    six = frame[frame["card"] == "2b2ee734"]
    assert list(six["rate"]) == [40.0, 48.0, 56.0, 64.0, 72.0]
    assert list(six["none E2E mean s"]) == pytest.approx([1.653, 1.704, 2.035, 2.592, 3.139], abs=0.001)
    assert list(six["spec2 / none E2E mean"]) == pytest.approx([0.626, 0.934, 0.823, 0.740, 0.794], abs=0.001)
    assert list(six["spec1 / none E2E mean"]) == pytest.approx([0.693, 0.905, 0.804, 0.812, 0.841], abs=0.001)
    assert stops == {"spec1": None, "spec2": None}
    assert list(six["none SLO"]) == ["1/3 met", "1/3 met", "0/3 met", "0/3 met", "0/3 met"]
    assert list(six["spec2 SLO"]) == ["2/2 met", "1/2 met", "0/2 met", "0/2 met", "0/2 met"]
    top = six.iloc[-1]
    assert (round(top["none req/s"], 1), round(top["spec2 req/s"], 1), round(top["spec1 req/s"], 1)) == \
        (57.0, 58.2, 58.0)
