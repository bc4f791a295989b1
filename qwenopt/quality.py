"""Accuracy cost of a regime: perplexity on a bundled public-domain text, through the regime's own load path.

The text is the opening of Jane Austen's "Pride and Prejudice", chapter 1 (1813, public domain).
Real weights use the model's tokenizer. Random-weight models have no tokenizer: the text's UTF-8 bytes
stand in as token ids, which exercises the code path but says nothing about accuracy (the row says so).
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from importlib import resources

from .errors import QwenoptError
from .schema import QUALITY_COLUMNS  # noqa: F401  re-exported

TEXT = "pride-and-prejudice-ch1.txt"


def bundled_text() -> str:
    return resources.files("qwenopt").joinpath("data", TEXT).read_text()


def tokenize(text: str, source) -> tuple[list[int], str]:
    """(token ids, what tokenized them): the model's tokenizer for real weights, UTF-8 bytes for random ones."""
    if source.weights == "random":
        return list(text.encode("utf-8")), "utf8-bytes"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.location)
    return tokenizer(text)["input_ids"], tokenizer.name_or_path


def perplexity(model, ids: list[int], window: int, device: str) -> tuple[float, float]:
    """exp(mean next-token NLL) over the text in non-overlapping windows; returns (perplexity, mean NLL)."""
    import torch

    if len(ids) < 2:
        raise QwenoptError("the text is too short to score")
    total_nll, scored = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start:start + window + 1]], device=device)
            if chunk.shape[1] < 2:
                break
            logits = model(chunk[:, :-1]).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
            total_nll += float(nll)
            scored += chunk.shape[1] - 1
    mean = total_nll / scored
    return math.exp(mean), mean


def check_request(regime: str, window: int) -> None:
    """Refuse what quality cannot score before anything is loaded."""
    from .regimes import get_regime

    if get_regime(regime).engine != "hf":
        raise QwenoptError("quality runs on transformers regimes (hf-*); vLLM regimes share their weights with them")
    if window < 1:
        raise QwenoptError(f"--window must be positive, got {window}")


def measure(plan, window: int) -> dict:
    """Load the regime as `bench` does and score the bundled text; returns one quality row."""
    from .engines import make_engine

    check_request(plan.spec.name, window)
    engine = make_engine(plan.spec, plan.engine_options())
    try:
        info = engine.load()
        ids, tokenizer = tokenize(bundled_text(), plan.source)
        vocab = plan.source.config["vocab_size"]
        if max(ids) >= vocab:
            raise QwenoptError(f"token id {max(ids)} is outside the model's vocabulary of {vocab}")
        ppl, nll = perplexity(engine.model, ids, min(window, plan.source.max_context - 1), plan.device)
    finally:
        engine.close()
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "regime": plan.spec.name, "model": plan.source.name, "weights": plan.source.weights, "dtype": plan.dtype,
        "quant": info.quant or plan.quant, "device": plan.device, "tokenizer": tokenizer, "tokens": len(ids), "window": window,
        "perplexity": ppl, "nll_mean": nll,
    }
