from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.results import read_results


def test_bench_default_runs_tiny_model_end_to_end(tmp_results):
    result = CliRunner().invoke(app, ["bench", "--batch", "1,2", "--input-len", "16", "--output-len", "4", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    frame = read_results(tmp_results / "results" / "hf-fp16_qwen2-tiny.csv")
    assert list(frame["batch_size"]) == [1, 2]
    assert set(frame["status"]) == {"ok"}
