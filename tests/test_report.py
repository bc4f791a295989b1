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
