"""Any folder of result files: each file read as its kind, strays named and skipped, outputs checked first."""
import io

import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.collect import collect
from qwenopt.results import check_output
from qwenopt.errors import QwenoptError
from qwenopt.results import ResultWriter, append_csv
from qwenopt.schema import LOAD_COLUMNS, MATRIX_COLUMNS, QUALITY_COLUMNS
from tests.test_matrix import FRAME, row
from tests.test_matrix_online import LEVELS

PRE_V2_LOAD = ("timestamp,endpoint,served_model,launched_regime,model,rate,input_len,output_len,sent,completed,"
               "failed,timeouts,mismatched,latency_p99_s,req_s\n"
               "2026-11-24T16:42:24+00:00,http://x/v1,qwenopt,vllm-fp16,qwen2.5-7b,8.0,512,128,143,143,0,0,0,0.94,7.0\n")


@pytest.fixture
def folder(tmp_path):
    """Every kind of result file, plus the strays a real results folder collects."""
    bench = ResultWriter(tmp_path / "vllm_bench.csv")
    for r in FRAME.to_dict("records"):
        bench.append(r, [])
    ResultWriter(tmp_path / "tune_hf-fp16_tiny.csv").append(row("hf-fp16", 2, 0.9, 1.5, 384.0), [])
    for r in LEVELS:
        append_csv(tmp_path / "load_v2.csv", r, LOAD_COLUMNS)
    (tmp_path / "load_old.csv").write_text(PRE_V2_LOAD)
    append_csv(tmp_path / "quality.csv", {"regime": "hf-fp16", "perplexity": 9.5}, QUALITY_COLUMNS)
    (tmp_path / "matrix_old.csv").write_text("config,input_len,output_len,meets_slo,req_s\nhf-fp16,512,256,True,1.0\n")
    (tmp_path / "overhead.csv").write_text("batch,bare,qwenopt\n1,158.5,158.2\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81garbage\n\x00\x01")
    (tmp_path / "README.md").write_text("# notes\nnot, a, result\n")
    return tmp_path


def test_collect_sorts_every_kind_and_names_each_stray(folder):
    found = collect(sorted(folder.iterdir()))
    kinds = {p.rsplit("/", 1)[1]: k for p, k in found.kinds.items()}
    assert kinds == {"vllm_bench.csv": "bench", "tune_hf-fp16_tiny.csv": "tune", "load_v2.csv": "load",
                     "quality.csv": "quality", "matrix_old.csv": "matrix"}
    assert len(found.bench) == len(FRAME) + 1 and len(found.load) == len(LEVELS) and len(found.quality) == 1
    skipped = "\n".join(found.warnings)
    assert len(found.warnings) == 5  # old load, overhead, empty, binary, README; the samples sidecar silently
    assert "load_old.csv: a load file from before load schema v2" in skipped
    for name in ("overhead.csv", "empty.csv", "binary.csv", "README.md"):
        assert f"skipped {folder / name}" in skipped
    assert collect([folder]).kinds == {k: v for k, v in found.kinds.items()}  # a folder stands for its CSVs
    with pytest.raises(QwenoptError, match="no such result file"):
        collect([folder / "missing.csv"])


def test_matrix_and_report_take_the_whole_folder(folder, tmp_path_factory):
    files = [str(p) for p in sorted(folder.iterdir())]
    result = CliRunner().invoke(app, ["matrix", *files, "--slo-p99", "2", "--gpu-hour-usd", "3.6"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: skipped" in text and "not a qwenopt result file" in text
    assert "offline, in 512 / out 256 tokens" in text and "online, in 512 / out 128 tokens" in text
    assert "vllm-fp16 @vllm continuous-batching" in text and "Little's law" in text
    html = tmp_path_factory.mktemp("out") / "report.html"
    report = CliRunner().invoke(app, ["report", *files, "-o", str(html), "--slo-p99", "2"])
    assert report.exit_code == 0, report.output
    page = html.read_text()
    assert "Online: latency and goodput against offered load" in page and "SLO 2 s" in page
    assert "Quality (perplexity" in page and "Saved matrix" in page and "Every load level" in page


def test_matrix_formats_md_and_csv_go_to_stdout_and_to_out(folder):
    files = [str(folder / "vllm_bench.csv"), str(folder / "load_v2.csv")]
    csv = CliRunner().invoke(app, ["matrix", *files, "--slo-p99", "2", "--format", "csv"])
    assert csv.exit_code == 0, csv.output
    frame = pd.read_csv(io.StringIO(csv.stdout))
    assert list(frame.columns) == MATRIX_COLUMNS and set(frame["source"]) == {"offline", "online"}
    md = CliRunner().invoke(app, ["matrix", *files, "--slo-p99", "2", "--format", "md", "--out", str(folder / "m.md")])
    assert md.exit_code == 0, md.output
    lines = md.stdout.splitlines()
    assert sum(line.startswith("| config | load |") for line in lines) == 2
    assert any(line.startswith("|---|") for line in lines) and "- **conc/GPU**:" in md.stdout
    assert (folder / "m.md").read_text() == md.stdout
    table = CliRunner().invoke(app, ["matrix", *files, "--slo-p99", "2", "--out", str(folder / "m.csv")])
    assert table.exit_code == 0 and "691,200" in table.stdout  # vllm-fp16 online at 8 req/s, never cut at 80 columns
    assert list(pd.read_csv(folder / "m.csv").columns) == MATRIX_COLUMNS
    bad = CliRunner().invoke(app, ["matrix", *files, "--format", "xml"])
    assert bad.exit_code == 2 and "--format must be table, md or csv" in bad.output


def test_bad_output_paths_are_refused_before_any_work(folder):
    bench = folder / "vllm_bench.csv"
    before = bench.read_bytes()
    runner = CliRunner()
    for args in (["matrix", str(bench), "--out", str(folder)], ["report", str(bench), "-o", str(folder)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "is a directory" in result.output
        assert len(result.output.strip().splitlines()) == 1
    for args in (["matrix", str(bench), "--out", str(bench)], ["report", str(bench), "-o", str(bench)],
                 ["report", str(folder), "-o", str(bench)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "is also an input of this command" in result.output
    assert bench.read_bytes() == before
    # checked before the inputs are read: a stray input alone would be a different error
    stray = runner.invoke(app, ["matrix", str(folder / "overhead.csv"), "--out", str(folder)])
    assert stray.exit_code == 2 and "is a directory" in stray.output
    (folder / "plain").write_text("")
    with pytest.raises(QwenoptError, match="cannot create files under"):
        check_output(folder / "plain" / "m.csv", suffix=None, inputs=[bench])


def test_matrix_right_after_the_readmes_bench_and_quality_runs(tmp_results):
    """Issue 14, item 7: two workloads from `bench` and a quality.csv beside them make two tables, not an error."""
    writer = ResultWriter(tmp_results / "results" / "bench.csv")
    writer.append(row("hf-fp16", 1, 0.5, 2.0, 128.0, input_len=128, output_len=64), [])
    writer.append(row("hf-fp16", 1, 0.7, 1.5, 192.0, input_len=512, output_len=128), [])
    append_csv(tmp_results / "results" / "quality.csv", {"regime": "hf-fp16", "perplexity": 9.5}, QUALITY_COLUMNS)
    (tmp_results / "results" / "logs").mkdir()
    result = CliRunner().invoke(app, ["matrix", "results/bench.csv", "results/quality.csv", "results/logs",
                                      "--slo-p99", "1", "--format", "csv"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame["workload"]) == ["in 128 / out 64", "in 512 / out 128"]
    assert list(frame["relative_unit_cost"]) == [1.0, 1.0]  # each table against its own baseline
    assert "quality rows, which the matrix does not use" in result.output
    assert "results/logs: a folder with no .csv files" in result.output
