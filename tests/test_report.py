"""The HTML report from saved result files: charts, the cost matrix, every cell."""
from html.parser import HTMLParser

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
