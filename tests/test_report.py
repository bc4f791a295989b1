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


def test_line_chart_ticks_read_for_small_values_and_draw_the_slo_line():
    svg = line_chart({"p99": [(1, 0.2), (2, 0.9)]}, "offered req/s", "seconds", hline=(1.0, "SLO 1 s"))
    assert ">0.275<" in svg and "SLO 1 s" in svg and "stroke-dasharray" in svg
