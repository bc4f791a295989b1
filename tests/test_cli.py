"""The CLI end to end on the tiny model through the real transformers path, and every bad input."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.results import COLUMNS, read_results, read_samples

SMALL = ["--batch", "1,2", "--input-len", "8,16", "--output-len", "4", "--repeats", "2", "--warmup", "1"]


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_bench_writes_one_row_per_cell_with_the_schema(tmp_results):
    result = invoke("bench", *SMALL)
    assert result.exit_code == 0, result.output
    path = tmp_results / "results" / "hf-fp16_qwen2-tiny.csv"
    frame = read_results(path)
    assert list(frame.columns) == COLUMNS
    assert [(r.batch_size, r.input_len, r.output_len) for r in frame.itertuples()] == [
        (1, 8, 4), (1, 16, 4), (2, 8, 4), (2, 16, 4)]
    assert set(frame["status"]) == {"ok"}
    assert set(frame["weights"]) == {"random"} and set(frame["model"]) == {"qwen2-tiny"}
    assert set(frame["device"]) == {"cpu"} and set(frame["dtype"]) == {"fp32"}
    assert list(frame["samples"]) == [2, 2, 4, 4]  # batch x repeats requests measured
    assert list(frame["timings"]) == [2, 2, 2, 2]  # but a static batch is timed once per repeat
    assert "P99 from fewer than 100 independent timings" in " ".join(result.stdout.split())
    for column in ("latency_p50_s", "latency_p99_s", "ttft_p50_ms", "tpot_p50_ms", "output_tok_s", "total_tok_s",
                   "req_s", "load_s", "weights_gib"):
        assert (frame[column] > 0).all(), column
    assert (frame["ttft_p50_ms"] / 1e3 < frame["latency_p50_s"]).all()
    # output tok/s = requests x output_len / wall, total adds the prompt tokens
    ratio = frame["total_tok_s"] / frame["output_tok_s"]
    assert list(ratio.round(6)) == [(8 + 4) / 4, (16 + 4) / 4, (8 + 4) / 4, (16 + 4) / 4]
    # no GPU: the GPU columns are empty in the file, not zero
    raw = pd.read_csv(path, keep_default_na=False, dtype=str)
    for column in ("gpu_mem_peak_gib", "gpu_util_pct", "power_w", "energy_j_per_tok", "roofline_eff", "mem_bw_gbs"):
        assert set(raw[column]) == {""}, column
    assert frame["torch"].notna().all() and frame["qwenopt"].notna().all()
    samples = read_samples(tmp_results / "results" / "hf-fp16_qwen2-tiny.csv")
    assert len(samples) == 4 and len(samples[2]["samples"]) == 4
    assert samples[0]["gpu_mem_peak_gib_per_gpu"] == []  # one peak per GPU; none here
    assert {s["output_tokens"] for cell in samples for s in cell["samples"]} == {4}


def test_second_run_appends_to_the_same_file(tmp_results):
    out = str(tmp_results / "r.csv")
    assert invoke("bench", *SMALL, "--out", out).exit_code == 0
    assert invoke("bench", "--batch", "1", "--input-len", "8", "--output-len", "2", "--repeats", "1", "--out", out).exit_code == 0
    frame = read_results(out)
    assert len(frame) == 5
    assert frame["run_id"].nunique() == 2
    assert list(frame["output_len"]) == [4, 4, 4, 4, 2]


def test_config_file_sets_the_sweep_and_flags_override_it(tmp_results):
    (tmp_results / "sweep.toml").write_text(
        '[bench]\nregime = "hf-fp16"\nmodel = "qwen2-tiny"\nbatch = [1, 2]\ninput-len = "8"\noutput_len = 3\nrepeats = 1\n')
    result = invoke("bench", "--config", "sweep.toml", "--batch", "3", "--out", "c.csv")
    assert result.exit_code == 0, result.output
    frame = read_results(tmp_results / "c.csv")
    assert list(frame["batch_size"]) == [3] and list(frame["output_len"]) == [3] and list(frame["repeats"]) == [1]
    (tmp_results / "sweep.yaml").write_text("batch: [1, 2]\ninput_len: 8\noutput_len: 2\nrepeats: 1\n")
    assert invoke("bench", "--config", "sweep.yaml", "--out", "y.csv").exit_code == 0
    assert list(read_results(tmp_results / "y.csv")["batch_size"]) == [1, 2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--regime", "hf-fp64"], "unknown regime 'hf-fp64'; choose one of: hf-fp16, hf-nf4"),
        (["--batch", "1,x"], "--batch must be comma-separated positive integers"),
        (["--batch", "1,,2"], "--batch must be comma-separated positive integers"),
        (["--input-len", "0"], "--input-len sizes must be positive, got 0"),
        (["--output-len", "-4"], "--output-len sizes must be positive, got -4"),
        (["--input-len", "4000", "--output-len", "200"], "exceed the model's context of 4096"),
        (["--device", "cuda"], "--device cuda asked for, but no CUDA GPU is visible"),
        (["--device", "tpu"], "--device must be one of auto, cuda, cpu"),
        (["--dtype", "int3"], "--dtype must be one of"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--weights", "fake"], "--weights must be one of real, random"),
        (["--model", "qwen2-tiny", "--weights", "real"], "exists only with random weights"),
        (["--model", "no-such-model"], "is neither a bundled name"),
        (["--regime", "hf-nf4"], "regime 'hf-nf4' needs bitsandbytes: install it with pip install 'qwenopt[bnb]'"),
        (["--regime", "hf-fp16", "--kernel", "marlin"], "--kernel picks the gptqmodel kernel of hf-gptq"),
        (["--regime", "hf-fa2"], "regime 'hf-fa2' runs sdpa-flash, which needs a CUDA GPU"),
        (["--attn", "sdpa-efficient"], "--attn sdpa-efficient needs a CUDA GPU"),
        (["--attn", "flash3"], "unknown --attn 'flash3'; choose one of: sdpa, sdpa-flash"),
        (["--regime", "vllm-fp16", "--attn", "sdpa"], "--attn applies to transformers regimes"),
        (["--regime", "vllm-fp16", "--compile"], "--compile applies to transformers regimes"),
        (["--regime", "vllm-fp16"], "regime 'vllm-fp16' needs vllm: install it with pip install 'qwenopt[vllm]'"),
        (["--regime", "vllm-int4", "--quant", "fp8"], "--quant 'fp8' does not apply to vllm-int4; it takes awq, gptq"),
        (["--model", "qwen2.5-7b", "--max-model-len", "131072"],
         "--max-model-len applies to vllm regimes, and to transformers with --weights random"),
        (["--tp", "2"], "--tp/--pp need a vllm regime"),
        (["--quant", "awq"], "--quant 'awq' does not apply to hf-fp16"),
        (["--out", "results.txt"], "--out must name a .csv file"),
        (["--engine-args", "[1]"], "--engine-args must be a JSON object"),
        (["--config", "missing.toml"], "no such config file: missing.toml"),
    ],
)
def test_bad_input_gets_one_line_and_a_nonzero_exit(tmp_results, args, message):
    result = invoke("bench", *args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in " ".join(result.output.split())
    assert not (tmp_results / "results").exists()  # nothing half-written


def test_config_file_with_unknown_or_mistyped_option_is_refused(tmp_results):
    (tmp_results / "bad.toml").write_text("batchsize = 4\n")
    result = invoke("bench", "--config", "bad.toml")
    assert result.exit_code == 2 and "unknown option(s) batchsize" in result.output
    (tmp_results / "typed.yaml").write_text("repeats: five\n")
    result = invoke("bench", "--config", "typed.yaml")
    assert result.exit_code == 2 and "option repeats must be int, got 'five'" in result.output


def test_regimes_lists_every_regime_with_its_extra_and_status():
    result = invoke("regimes")
    assert result.exit_code == 0
    for name in ("hf-fp16", "hf-nf4", "hf-gptq", "hf-fa2", "vllm-fp16", "vllm-int4"):
        assert name in result.output

    from qwenopt.regimes import REGIMES, availability

    assert availability(REGIMES["hf-fp16"], gpus=0) == (True, "ready")
    assert availability(REGIMES["hf-nf4"], gpus=0)[1] == "needs bitsandbytes: pip install 'qwenopt[bnb]'"


def test_env_prints_the_fingerprint_as_json():
    result = invoke("env", "--json")
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["torch"] and info["qwenopt"] and "gpu_name" in info


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from qwenopt.cli import app; "
            "r = CliRunner().invoke(app, ['bench', '--help']); assert r.exit_code == 0; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
