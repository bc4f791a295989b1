import math

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.quality import QUALITY_COLUMNS, bundled_text, perplexity


class UniformModel:
    """Equal logits over V tokens: every next token has probability 1/V, so perplexity is exactly V."""

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, ids):
        return type("Out", (), {"logits": torch.zeros(ids.shape[0], ids.shape[1], self.vocab)})()


def test_perplexity_of_a_uniform_model_is_its_vocabulary_size():
    ppl, nll = perplexity(UniformModel(50), list(range(1, 40)), window=8, device="cpu")
    assert ppl == pytest.approx(50.0)
    assert nll == pytest.approx(math.log(50))


def test_bundled_text_is_the_public_domain_passage():
    assert bundled_text().startswith("It is a truth universally acknowledged")


def test_quality_command_scores_the_tiny_model_through_the_hf_path(tmp_results):
    result = CliRunner().invoke(app, ["quality", "--window", "256", "--out", "q.csv"])
    assert result.exit_code == 0, result.output
    assert "code-path check" in result.output
    row = pd.read_csv(tmp_results / "q.csv").iloc[0]
    assert list(pd.read_csv(tmp_results / "q.csv").columns) == QUALITY_COLUMNS
    assert row["tokenizer"] == "utf8-bytes" and row["tokens"] == len(bundled_text().encode())
    # an untrained model is close to uniform over its 8,192 ids, never better than a perfect one
    assert 1 < row["perplexity"] < 10 * 8192
    assert CliRunner().invoke(app, ["quality", "--window", "256", "--out", "q.csv"]).exit_code == 0
    assert len(pd.read_csv(tmp_results / "q.csv")) == 2


@pytest.mark.parametrize("args, message", [
    (["--regime", "vllm-fp16"], "quality runs on transformers regimes"),
    (["--regime", "hf-nf4"], "needs bitsandbytes: install it with pip install 'qwenopt[bnb]'"),
    (["--window", "0"], "--window must be positive"),
])
def test_quality_bad_input(tmp_results, args, message):
    result = CliRunner().invoke(app, ["quality", *args])
    assert result.exit_code == 2 and message in result.output
