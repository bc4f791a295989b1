"""The HTML report from saved result files: charts, the cost matrix, every cell."""
import math
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.report import line_chart


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_line_chart_places_points_on_a_log2_batch_axis():
    svg = line_chart({"a": [(1, 10.0), (4, 40.0)], "b": [(2, 20.0)]}, "batch size", "tok/s", width=300, height=200)
    parser = Tags()
    parser.feed(svg)
    assert parser.tags.count("polyline") == 2 and parser.tags.count("circle") == 3
    assert "batch size" in parser.text and "a" in parser.text and "b" in parser.text
    assert line_chart({}, "x", "y") == ""


def test_report_command_writes_one_self_contained_page(tmp_results):
    runner = CliRunner()
    for batch in ("1,2", "4"):
        assert runner.invoke(app, ["bench", "--batch", batch, "--input-len", "8", "--output-len", "3", "--repeats", "1",
                                   "--out", "r.csv"]).exit_code == 0
    result = runner.invoke(app, ["report", "r.csv", "-o", "report.html", "--slo-p99", "60"])
    assert result.exit_code == 0, result.output
    page = (tmp_results / "report.html").read_text()
    parser = Tags()
    parser.feed(page)
    assert parser.tags.count("svg") == 1 and parser.tags.count("polyline") == 1  # one workload, one configuration
    assert parser.tags.count("table") == 2  # the cost matrix and every cell
    assert "hf-fp16" in page and "relative to hf-fp16" in page and "http" not in page.replace("http://www.w3.org", "")
    bad = runner.invoke(app, ["report", "missing.csv"])
    assert bad.exit_code == 2 and "no such result file" in bad.output


def test_report_draws_each_configs_load_latency_curve_with_the_slo_line(tmp_path):
    from qwenopt.results import append_csv
    from qwenopt.schema import LOAD_COLUMNS
    from tests.test_matrix_online import LEVELS

    for r in LEVELS:
        append_csv(tmp_path / "load.csv", r, LOAD_COLUMNS)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "load.csv"), "-o", str(tmp_path / "r.html"),
                                      "--slo-p99", "2"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    parser = Tags()
    parser.feed(page)
    # three configurations: a latency chart each (E2E P50/P99, TTFT P50/P99) and one goodput chart for all three
    assert parser.tags.count("svg") == 4 and parser.tags.count("polyline") == 3 * 4 + 3
    assert page.count("stroke-dasharray") == 3 and page.count("SLO 2 s") == 3  # the SLO line on each latency chart
    assert "online, in 512 / out 128 tokens" in page and "relative to hf-fp16 @transformers plain" in page
    # the client-bound level is in the table of every level but on no curve: vllm-fp16's curve has rates 4, 8, 12
    assert "client-bound" in page
    assert "slowest 1%: stalls s" not in page  # rows without the tail split: no such curve

    for r in LEVELS:  # the same levels with the slowest requests' stalls measured: a fifth curve on each chart
        append_csv(tmp_path / "tail.csv", {**r, "tail_ttft_s": 0.1, "tail_decode_s": 0.5, "tail_stall_s": 0.3},
                   LOAD_COLUMNS)
    assert CliRunner().invoke(app, ["report", str(tmp_path / "tail.csv"), "-o", str(tmp_path / "t.html")]).exit_code == 0
    parser = Tags()
    parser.feed((tmp_path / "t.html").read_text())
    assert parser.tags.count("polyline") == 3 * 5 + 3 and "slowest 1%: stalls s" in parser.text


def test_a_mixed_workload_gets_each_class_charted_by_config(tmp_path):
    from qwenopt.results import append_csv
    from qwenopt.schema import LOAD_COLUMNS

    mix = "mix short=0.8:64:64,long=0.2:4096:256"
    for gateway, ttft in ((False, 500.0), (True, 300.0)):
        for rate in (10, 20):
            for klass, input_len in (("short", 64), ("long", 4096), ("all", 871 + rate)):  # all: a mean length
                append_csv(tmp_path / "load.csv", {
                    "schema_version": 2, "run_id": "r", "class": klass, "status": "ok", "regime": "vllm-fp16",
                    "server": "vllm", "via_gateway": gateway, "mode": "open", "rate": rate, "workload": mix,
                    "input_len": input_len, "output_len": 64, "ttft_p99_ms": ttft * rate / 10,
                    "goodput_req_s": rate / 2, "req_s": rate, "latency_p50_s": 1, "latency_p99_s": 2,
                    "ttft_p50_ms": 100}, LOAD_COLUMNS)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "load.csv"), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    assert page.count(f"<h3>{mix}: by offered req/s") == 1  # the levels' differing mean lengths split nothing
    for klass in ("short", "long"):
        assert f"<h4>class {klass}: TTFT P99 s" in page and f"<h4>class {klass}: goodput req/s" in page
    parser = Tags()
    parser.feed(page)
    assert parser.tags.count("svg") == 2 + 1 + 2 * 2  # a latency chart per config, goodput, 2 charts per class


def test_line_chart_ticks_read_for_small_values_and_draw_the_slo_line():
    svg = line_chart({"p99": [(1, 0.2), (2, 0.9)]}, "offered req/s", "seconds", hline=(1.0, "SLO 1 s"))
    assert ">0.275<" in svg and "SLO 1 s" in svg and "stroke-dasharray" in svg


def test_a_tune_search_gets_its_trials_their_scatter_and_the_defaults_named(tmp_path):
    """The committed H200 int4 search (results/h200/tune/v2): six trials, trial 0 (the defaults) the most goodput,
    the Pareto front 0, 3, 1 as tune's own outcome printed it."""
    from pathlib import Path

    import pandas as pd

    from qwenopt.collect import collect
    from qwenopt.report import build_report
    from qwenopt.report_tune import pareto, trial_rows

    search = Path(__file__).resolve().parent.parent / "results/h200/tune/v2/tune_int4.csv"
    page = build_report(collect([search]), slo_p99_s=2.0)
    section = page[page.index("<h2>Tune searches"):page.index("<h2>Online")]
    assert "Most goodput: trial 0, 40.60 req/s (offered 45.10) at P99 1.973 s (the defaults)." in section
    parser = Tags()
    parser.feed(section)
    assert parser.tags.count("circle") == 6 and parser.tags.count("tr") == 7  # six trials and the header
    assert "SLO 2 s" in parser.text and "stream_interval 4" in parser.text and "engine defaults" in parser.text
    rows = pd.read_csv(search)
    trials = trial_rows(rows[rows["class"] == "all"])
    assert sorted(pareto(trials)) == [0, 1, 3]
    assert trials.set_index("trial").loc[3, "goodput_req_s"] == pytest.approx(38.8978, abs=1e-4)
    assert trials.set_index("trial").loc[3, "offered_req_s"] == pytest.approx(42.629)
    # the bracket each trial's probes left open: met 45.1 / missed 56.375 (defaults), met 42.629 / missed 53.286
    assert list(trials.set_index("trial").loc[[0, 3], "missed_rate_req_s"]) == [56.375, 53.286]
    assert "slowest 1%" not in section  # rows from before the tail columns: no empty column
    # the fp16 search: trial 5 held 44.91 req/s offered, which the defaults had missed at 42.86
    fp16 = build_report(collect([search.with_name("tune_fp16.csv")]), slo_p99_s=2.0)
    assert "+29.2% over the defaults; the winner met 44.91 req/s offered, a rate the defaults missed (at 42.86): " \
           "at least +4.8% in rate offered." in fp16


def test_tune_trials_that_met_nothing_or_never_started_keep_their_status():
    import pandas as pd

    from qwenopt.report_tune import scatter_chart, trial_rows, tune_sections

    def level(trial, status, trial_status, req_s, p99, rate=10.0, config="{}"):
        return {"study": "s1", "trial": trial, "search_step": "tpe", "trial_config": config, "status": status,
                "trial_status": trial_status, "req_s": req_s, "latency_p99_s": p99, "rate": rate, "class": "all",
                "slo": "e2e=2s", "regime": "vllm-int4", "workload": "in 8 / out 3"}

    frame = pd.DataFrame([level(0, "ok", "ok", 9.0, 1.5), level(0, "ok", "missed-slo", 14.0, 2.5, rate=15.0),
                          level(1, "ok", "missed-slo", 5.0, 3.0, config='{"max_num_seqs": 64}'),
                          level(2, "error", "oom", None, None, rate=None, config='{"gpu_memory_utilization": 0.95}'),
                          level(3, "ok", "ok", 12.0, 1.9, rate=13.0, config='{"stream_interval": 4}')])
    trials = trial_rows(frame).set_index("trial")
    assert list(trials["status"]) == ["ok", "missed-slo", "oom", "ok"]
    assert trials.loc[0, "goodput_req_s"] == 9.0 and trials.loc[0, "offered_req_s"] == 10.0
    assert math.isnan(trials.loc[1, "goodput_req_s"]) and trials.loc[2, "levels"] == 0
    assert trials.loc[1, "configuration"] == "max_num_seqs 64"
    assert trials.loc[0, "missed_rate_req_s"] == 15.0 and trials.loc[1, "missed_rate_req_s"] == 10.0
    assert math.isnan(trials.loc[3, "missed_rate_req_s"])
    text = "".join(tune_sections(frame))
    # trial 3's 13 req/s lies inside the defaults' bracket (met 10, missed 15): the gain is not told apart
    assert "Most goodput: trial 3, 12.00 req/s (offered 13.00) at P99 1.900 s; +33.3% over the defaults; the " \
           "defaults met 10.00 req/s offered and missed 15.00; the winner&#x27;s 13.00 lies between, so the search " \
           "has not told them apart." in text
    past = frame.assign(rate=[10.0, 15.0, 10.0, None, 16.0])  # trial 3 held 16, a rate above the defaults' miss
    assert "the winner met 16.00 req/s offered, a rate the defaults missed (at 15.00): at least +6.7% in rate " \
           "offered." in "".join(tune_sections(past))
    assert scatter_chart(trial_rows(frame[frame["trial"] == 1]), []) == ""  # no trial met the SLO: no chart
    assert tune_sections(frame.drop(columns=["study"])) == []
    # rows with the tail split show the best level's: trial 0's best is its 9 req/s level
    split = frame.assign(tail_ttft_s=0.1, tail_decode_s=[1.0, 1.5, 2.0, None, 1.2], tail_stall_s=0.4)
    shown = trial_rows(split).set_index("trial")["slowest 1%: TTFT / decode / stalls s"]
    assert list(shown) == ["0.100 / 1.000 / 0.400", "", "", "0.100 / 1.200 / 0.400"]


def test_a_config_measured_on_several_starts_gets_a_curve_per_start(tmp_path):
    """A search's trial and `qwenopt confirm`'s fresh starts share a config: each start (run_id) is its own chart and
    goodput line, labelled by its run, where one line would zigzag between starts and merge two levels at one rate.
    A config of one run keeps its plain label."""
    from qwenopt.results import append_csv
    from qwenopt.schema import LOAD_COLUMNS
    from tests.test_matrix_online import level

    rows = [{**level("vllm-fp16", p99, rate - 1, rate=rate), "run_id": run}
            for run, points in (("search", ((34, 1.9), (43, 2.2))), ("start1", ((35, 1.7), (41, 1.9))),
                                ("start2", ((35, 1.8), (41, 2.1))))
            for rate, p99 in points]
    rows += [{**level("vllm-int4", 1.5, 39, rate=40, quant="awq"), "run_id": "search"}]
    for r in rows:
        append_csv(tmp_path / "load.csv", r, LOAD_COLUMNS)
    assert CliRunner().invoke(app, ["report", str(tmp_path / "load.csv"), "-o", str(tmp_path / "r.html")]).exit_code == 0
    page = (tmp_path / "r.html").read_text()
    heads = [h for h in page.split("<h4>")[1:]]
    fp16 = [h.split("</h4>")[0] for h in heads if h.startswith("vllm-fp16")]
    assert [h.rsplit(" · run ", 1)[1] for h in fp16] == ["search", "start1", "start2"]
    assert sum(h.startswith("vllm-int4") and " · run " not in h.split("</h4>")[0] for h in heads) == 1
    parser = Tags()
    parser.feed(page)
    assert parser.tags.count("svg") == 5 and parser.tags.count("polyline") == 4 * 4 + 4  # 4 charts + goodput
    assert "<b>cards</b>" not in page  # rows from before gpu_uuid: nothing to count


def test_the_report_counts_the_cards_its_rows_ran_on(tmp_path):
    from qwenopt.results import append_csv
    from qwenopt.schema import LOAD_COLUMNS
    from tests.test_matrix_online import level

    for uuid, rate in (("GPU-a", 10), ("GPU-a", 20), ("GPU-b,GPU-c", 10)):
        append_csv(tmp_path / "load.csv", {**level("vllm-fp16", 1.0, rate - 1, rate=rate), "gpu_uuid": uuid},
                   LOAD_COLUMNS)
    assert CliRunner().invoke(app, ["report", str(tmp_path / "load.csv"), "-o", str(tmp_path / "r.html")]).exit_code == 0
    assert "<b>cards</b> 3" in (tmp_path / "r.html").read_text()
