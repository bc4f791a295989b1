"""The online cost matrix on hand-made load rows (schema v2), every figure computed by hand in the comments."""
import json
import math

import pandas as pd
import pytest

from qwenopt.errors import QwenoptError
from qwenopt.matrix import cost_tables, sustained_levels, to_csv, to_markdown
from qwenopt.schema import LOAD_COLUMNS, LOAD_SCHEMA_VERSION, MATRIX_COLUMNS


def level(regime, p99, req_s, rate=None, concurrency=None, server="vllm", serve_mode="continuous-batching",
          quant=None, tp=1, gpus=1, sent=100, completed=None, status="ok", cls="all", mean=None, in_flight=None,
          out_tok_s=None, total_tok_s=None, energy=None, ttft_p99_ms=50.0, input_len=512, output_len=128,
          workload="fixed"):
    """One load row v2 with every column present; unset metrics follow from req_s and the lengths."""
    row = {c: None for c in LOAD_COLUMNS}
    row.update({
        "schema_version": LOAD_SCHEMA_VERSION, "run_id": "r", "level": 0, "class": cls, "status": status,
        "server": server, "serve_mode": serve_mode, "regime": regime, "quant": quant, "tp": tp, "pp": 1,
        "gpus": gpus, "mode": "open" if rate else "closed", "rate": rate, "concurrency": concurrency,
        "workload": workload, "input_len": input_len, "output_len": output_len, "sent": sent,
        "completed": sent if completed is None else completed, "samples": sent, "latency_p99_s": p99,
        "latency_p50_s": p99 / 2, "latency_mean_s": p99 / 2 if mean is None else mean, "ttft_p50_ms": ttft_p99_ms / 2,
        "ttft_p99_ms": ttft_p99_ms, "req_s": req_s, "concurrency_mean": in_flight,
        "output_tok_s": req_s * output_len if out_tok_s is None else out_tok_s,
        "total_tok_s": req_s * (input_len + output_len) if total_tok_s is None else total_tok_s,
        "energy_j_per_tok": energy, "goodput_req_s": req_s,
    })
    return row


HF = dict(server="transformers", serve_mode="plain")
LEVELS = [
    # hf-fp16, plain: rate 1 is the highest within P99 <= 2 s
    level("hf-fp16", 1.0, 0.5, rate=0.5, **HF),
    level("hf-fp16", 1.8, 1.0, rate=1, mean=1.2, in_flight=1.2, out_tok_s=128, total_tok_s=640, energy=1.5, **HF),
    level("hf-fp16", 5.0, 1.1, rate=2, **HF),  # misses the SLO
    # vllm-fp16: rate 8 is chosen; 12 completed 98% and 16 was client-bound, both within the SLO
    level("vllm-fp16", 0.5, 4.0, rate=4, ttft_p99_ms=100.0),
    level("vllm-fp16", 0.9, 8.0, rate=8, mean=0.5, in_flight=4.0, out_tok_s=1024, total_tok_s=5120, energy=0.3,
          ttft_p99_ms=300.0),
    level("vllm-fp16", 1.2, 11.0, rate=12, completed=98, status="failed"),
    level("vllm-fp16", 1.5, 15.0, rate=16, status="client-bound"),
    # vllm-int4 on two GPUs: rate 24 completed exactly 99% and has no concurrency_mean (Little's law from the row)
    level("vllm-int4", 1.9, 16.0, rate=16, quant="awq:marlin", tp=2, gpus=2),
    level("vllm-int4", 1.95, 20.0, rate=24, quant="awq:marlin", tp=2, gpus=2, sent=1000, completed=990, mean=1.1,
          out_tok_s=2560, total_tok_s=12800),
    level("vllm-int4", 1.0, 30.0, rate=32, quant="awq:marlin", tp=2, gpus=2, cls="short"),  # a class row, not a level
]


def online(levels=LEVELS, **options):
    tables = cost_tables(pd.DataFrame(), pd.DataFrame(levels), 2.0, 3.6, **options)
    assert len(tables) == 1 and tables[0].attrs["source"] == "online"
    return tables[0].set_index("config")


def test_each_configuration_is_costed_at_its_highest_sustained_load_within_the_slo():
    m = online(target_requests_per_day=1e6)
    assert list(m.index) == ["vllm-int4 (awq:marlin) @vllm continuous-batching tp2",
                             "vllm-fp16 @vllm continuous-batching", "hf-fp16 @transformers plain"]  # cheapest first
    hf, v, q = m.iloc[2], m.iloc[1], m.iloc[0]
    assert (hf["rate"], v["rate"], q["rate"]) == (1, 8, 24)
    assert (hf["req_s"], v["req_s"], q["req_s"]) == (1.0, 8.0, 20.0)
    # concurrency per GPU: the row's concurrency_mean / GPUs; without it Little's law, 20 req/s x 1.1 s / 2 GPUs
    assert hf["concurrency_per_gpu"] == pytest.approx(1.2)
    assert v["concurrency_per_gpu"] == pytest.approx(4.0)
    assert q["concurrency_per_gpu"] == pytest.approx(11.0)
    assert v["requests_per_day"] == pytest.approx(8 * 86400)
    # unit cost = (GPUs / req/s) / hf's (1 / 1.0): vllm 1/8, int4 2/20
    assert hf["relative_unit_cost"] == pytest.approx(1.0)
    assert v["relative_unit_cost"] == pytest.approx(0.125)
    assert q["relative_unit_cost"] == pytest.approx(0.1)
    # $/1M tokens = 3.6 $/h x GPUs / (tok/s x 3600 s/h) x 1e6 = 1000 x GPUs / tok/s
    assert hf["usd_per_1m_output_tokens"] == pytest.approx(1000 / 128)
    assert hf["usd_per_1m_total_tokens"] == pytest.approx(1000 / 640)
    assert v["usd_per_1m_output_tokens"] == pytest.approx(1000 / 1024)
    assert q["usd_per_1m_output_tokens"] == pytest.approx(2000 / 2560)
    assert q["usd_per_1m_total_tokens"] == pytest.approx(2000 / 12800)
    assert (hf["energy_j_per_tok"], v["energy_j_per_tok"]) == (1.5, 0.3) and math.isnan(q["energy_j_per_tok"])
    # 1e6 requests a day: hf 86,400/day -> 12 replicas; vllm 691,200 -> 2; int4 1,728,000 -> 1 replica of 2 GPUs
    assert (hf["gpus_for_target"], v["gpus_for_target"], q["gpus_for_target"]) == (12, 2, 2)


def test_a_client_bound_or_incomplete_level_is_never_picked():
    ok = sustained_levels(pd.DataFrame(LEVELS), 2.0)
    fp16 = ok[ok["regime"] == "vllm-fp16"]
    assert sorted(fp16["rate"]) == [4, 8]  # 12 (98% completed) and 16 (client-bound) are out
    int4 = ok[ok["regime"] == "vllm-int4"]
    assert sorted(int4["rate"]) == [16, 24]  # exactly 99% counts; the "short" class row is not a level
    # with only such levels left, the configuration meets no SLO rather than being costed on them
    only_bad = [r for r in LEVELS if r["regime"] != "vllm-fp16" or r["rate"] in (12, 16)]
    m = online(only_bad)
    assert not m.loc["vllm-fp16 @vllm continuous-batching", "meets_slo"]
    assert math.isnan(m.loc["vllm-fp16 @vllm continuous-batching", "relative_unit_cost"])


def test_the_ttft_slo_lowers_the_chosen_load():
    m = online(slo_ttft_s=0.2)  # vllm-fp16's rate 8 has TTFT P99 300 ms
    assert m.loc["vllm-fp16 @vllm continuous-batching", "rate"] == 4
    assert m.loc["vllm-fp16 @vllm continuous-batching", "relative_unit_cost"] == pytest.approx(0.25)


def test_closed_loop_levels_rank_by_users_and_the_plain_hf_server_is_the_baseline():
    levels = [
        level("hf-fp16", 1.0, 1.0, concurrency=1, **HF),
        level("hf-fp16", 1.5, 2.0, concurrency=4, serve_mode="continuous-batching", server="transformers"),
        level("hf-fp16", 1.9, 2.5, concurrency=8, serve_mode="continuous-batching", server="transformers"),
        level("hf-fp16", 9.0, 3.0, concurrency=16, serve_mode="continuous-batching", server="transformers"),
    ]
    tables = cost_tables(pd.DataFrame(), pd.DataFrame(levels), 2.0, 1.0)
    assert tables[0].attrs["baseline"] == "hf-fp16 @transformers plain"
    m = tables[0].set_index("config")
    cb = m.loc["hf-fp16 @transformers continuous-batching"]
    assert cb["concurrency"] == 8 and cb["relative_unit_cost"] == pytest.approx(1 / 2.5)


def test_offline_and_online_rows_are_separate_tables_per_workload():
    from tests.test_matrix import FRAME

    chat = [dict(r, workload="chat", input_len=None, output_len=None) for r in LEVELS[:3]]
    tables = cost_tables(FRAME, pd.DataFrame(LEVELS + chat), 1.0, 1.0)
    assert [(t.attrs["source"], t.attrs["workload"]) for t in tables] == [
        ("offline", "in 512 / out 256"), ("online", "chat"), ("online", "in 512 / out 128")]
    assert all(set(t["source"]) == {t.attrs["source"]} for t in tables)
    csv = to_csv(tables)
    assert csv.splitlines()[0] == ",".join(MATRIX_COLUMNS)
    md = to_markdown(tables, 1.0, None, 1.0, target=False)
    assert md.count("| config | load |") == 3 and "Little's law" in md
    only = cost_tables(FRAME, pd.DataFrame(LEVELS + chat), 1.0, 1.0, output_len=128)
    assert [t.attrs["workload"] for t in only] == ["in 512 / out 128"]
    with pytest.raises(QwenoptError, match="the files hold: chat; in 512 / out 128; in 512 / out 256"):
        cost_tables(FRAME, pd.DataFrame(LEVELS + chat), 1.0, 1.0, output_len=7)
    with pytest.raises(QwenoptError, match="baseline 'nope' has no cell within the SLO"):
        cost_tables(FRAME, pd.DataFrame(LEVELS), 1.0, 1.0, baseline="nope")


def test_online_label_names_engine_settings_left_to_the_engine_as_default():
    """tune's trial 0 leaves prefix caching to vLLM (null in engine_args): the label says "default", not null."""
    from qwenopt.matrix import online_label

    row = {"regime": "vllm-int4", "quant": "awq", "server": "vllm", "serve_mode": "fcfs",
           "engine_args": '{"enable_prefix_caching": null, "linear_backend": "marlin"}'}
    assert online_label(row) == ('vllm-int4 (awq) @vllm fcfs {"enable_prefix_caching": "default", '
                                 '"linear_backend": "marlin"}')
    assert online_label({**row, "engine_args": "not json"}).endswith(" not json")


def test_online_label_says_when_speculation_ran_at_an_assumed_acceptance():
    """tune_h100.sh spec-load's rows: an EAGLE-3 head with 2 draft tokens at an assumed per-token 0.8 (rates 0.8,
    0.64): a mean acceptance length of 1 + 0.8 + 0.64 = 2.44, said in the label as assumed."""
    from qwenopt.engines.vllm_spec import assumed_acceptance, speculative_config
    from qwenopt.matrix import online_label

    spec = {"speculative_config": {"method": "eagle3", "num_speculative_tokens": 2,
                                   "rejection_sample_method": "synthetic", "synthetic_acceptance_rates": [0.8, 0.64]}}
    row = {"regime": "vllm-int4", "quant": "awq", "server": "vllm", "serve_mode": "fcfs",
           "engine_args": json.dumps(spec)}
    assert online_label(row).endswith(
        "[speculation at an ASSUMED acceptance, mean acceptance length 2.44, not measured]")
    by_length = speculative_config("eagle3", "/head", 3, length=2.5)
    assert assumed_acceptance({"speculative_config": by_length}) == \
        "speculation at an ASSUMED acceptance, mean acceptance length 2.50, not measured"
    real = {"speculative_config": {"method": "eagle3", "num_speculative_tokens": 2}}  # a trained head: measured
    assert assumed_acceptance(real) is None and "[" not in online_label({**row, "engine_args": json.dumps(real)})
