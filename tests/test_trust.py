"""Bad output paths, absurd sizes and tables a person can read: refused or shown before any work."""
import io
import os

import pytest
from rich.console import Console
from typer.testing import CliRunner

from qwenopt.bench import BenchOptions, plan_sweep, plan_tune
from qwenopt.cli import app
from qwenopt.console import summary_table
from qwenopt.errors import QwenoptError
from qwenopt.results import check_output

SMALL = ["--batch", "1", "--input-len", "8", "--output-len", "2", "--repeats", "1", "--warmup", "0"]


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_check_output_refuses_what_cannot_be_written(tmp_path):
    (tmp_path / "d.csv").mkdir()
    (tmp_path / "in.csv").write_text("a\n1\n")
    with pytest.raises(QwenoptError, match="/proc"):
        check_output("/proc/x.csv")
    with pytest.raises(QwenoptError, match="is a directory"):
        check_output(tmp_path / "d.csv")
    with pytest.raises(QwenoptError, match="also an input of this command"):
        check_output(tmp_path / "in.csv", inputs=[tmp_path / ".." / tmp_path.name / "in.csv"])
    with pytest.raises(QwenoptError, match="must name a .csv file"):
        check_output(tmp_path / "x.txt")
    with pytest.raises(QwenoptError, match="cannot create files under"):
        check_output(tmp_path / "in.csv" / "below" / "x.csv")  # a file where a folder should be
    assert check_output(tmp_path / "new" / "deeper" / "x.csv") == tmp_path / "new" / "deeper" / "x.csv"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize("out, message", [("/proc/x.csv", "/proc"), ("d.csv", "is a directory")])
@pytest.mark.parametrize("command", ["bench", "tune", "quality"])
def test_bad_out_is_refused_before_any_work(tmp_results, monkeypatch, command, out, message):
    (tmp_results / "d.csv").mkdir()

    def no_engine(*args, **kwargs):
        raise AssertionError("an engine was made before --out was checked")

    monkeypatch.setattr("qwenopt.engines.make_engine", no_engine)
    args = {"bench": SMALL, "tune": ["--slo-p99", "1", "--input-len", "8", "--output-len", "2"], "quality": []}[command]
    result = invoke(command, *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_config_file_cannot_be_its_own_output(tmp_results):
    (tmp_results / "sweep.csv").write_text("batch = 1\n")
    result = invoke("bench", "--config", "sweep.csv", "--out", "sweep.csv")
    assert result.exit_code == 2 and "also an input" in result.output
    assert (tmp_results / "sweep.csv").read_text() == "batch = 1\n"


def test_absurd_sizes_are_refused_before_any_allocation(monkeypatch):
    with pytest.raises(QwenoptError, match=r"--batch 100,000,000 is over the limit of 65,536; set QWENOPT_MAX_BATCH"):
        plan_sweep(BenchOptions(batch="100000000", input_len="8"), gpus=0)
    with pytest.raises(QwenoptError, match="set QWENOPT_MAX_CELL_TOKENS"):
        plan_sweep(BenchOptions(batch="65536", input_len="512"), gpus=0)
    with pytest.raises(QwenoptError, match="--max-batch 1,000,000 is over the limit"):
        plan_tune(BenchOptions(input_len="8", output_len="2"), 1.0, 1_000_000, gpus=0)
    monkeypatch.setenv("QWENOPT_MAX_BATCH", "4")
    with pytest.raises(QwenoptError, match="--batch 8 is over the limit of 4"):
        plan_sweep(BenchOptions(batch="1,8", input_len="8"), gpus=0)
    monkeypatch.setenv("QWENOPT_MAX_BATCH", "lots")
    with pytest.raises(QwenoptError, match="QWENOPT_MAX_BATCH must be a positive integer"):
        plan_sweep(BenchOptions(batch="1", input_len="8"), gpus=0)


def test_bench_with_a_huge_batch_says_so_at_once(tmp_results):
    result = invoke("bench", "--batch", "100000000", "--input-len", "8")
    assert result.exit_code == 2 and "QWENOPT_MAX_BATCH" in result.output
    assert not (tmp_results / "results").exists()


def _render(table, width=80) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width).print(table)
    return buffer.getvalue()


def test_the_bench_table_fits_80_columns_without_cutting_a_number():
    rows = [
        dict(batch_size=256, input_len=32768, output_len=8192, status="ok", output_tok_s=123456.7, latency_p50_s=123.456,
             latency_p99_s=1234.567, ttft_p50_ms=123456.7, tpot_p50_ms=1234.56, gpu_mem_peak_gib=139.25,
             roofline_eff=0.75, samples=1280, timings=5),
        dict(batch_size=512, input_len=4096, output_len=256, status="oom", samples=0,
             error="OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB [x]"),
    ]
    text = _render(summary_table(rows))
    assert "…" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    for number in ("123,456.7", "123.456", "1,234.567*", "1,234.56", "139.25", "75%", "32768", "8192"):
        assert number in text, number
    flat = " ".join(text.split())
    assert "fewer than 100 independent timings" in flat  # 5 timings, though 1280 requests
    assert "bs=512 in=4096 out=256: oom: OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB [x]" in flat


def test_tables_go_to_stdout_and_regimes_show_the_whole_install_hint(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke("regimes")
    assert result.exit_code == 0 and "hf-nf4" in result.stdout and "…" not in result.stdout
    from qwenopt.regimes import REGIMES, availability

    for spec in REGIMES.values():
        ok, why = availability(spec, 0)
        if "pip install" in why:
            assert why in result.stdout  # e.g. pip install 'qwenopt[bnb]', the [bnb] kept, on one line
    assert "hf-fp16" not in result.stderr
