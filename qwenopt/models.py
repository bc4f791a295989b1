"""Model sources: bundled architectures, Hugging Face ids, local folders, real or random weights.

Random weights are a first-class source: speed and memory do not depend on weight values when
output lengths are forced, so air-gapped GPU hosts can benchmark the real architecture.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import QwenoptError

BUNDLED = ("qwen2.5-7b", "qwen2-tiny", "qwen2.5-0.5b")  # 0.5b: the speculative-decoding draft
# Where a bundled architecture's real weights live on the Hub, by quantization.
HUB_IDS = {
    "qwen2.5-7b": {
        "none": "Qwen/Qwen2.5-7B-Instruct",
        "awq": "Qwen/Qwen2.5-7B-Instruct-AWQ",
        "gptq": "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4",
        "nf4": "Qwen/Qwen2.5-7B-Instruct",
    },
    "qwen2.5-0.5b": {"none": "Qwen/Qwen2.5-0.5B-Instruct"},
}
WEIGHTS = ("real", "random")


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user asked for; goes into the result row
    weights: str  # "real" or "random"
    config: dict = field(repr=False)  # the architecture, as a Hugging Face config.json dict
    location: str | None = None  # Hub id or folder holding real weights

    @property
    def max_context(self) -> int:
        return max_context(self.config)


def cache_dir(kind: str, source: ModelSource, variant: str) -> Path:
    """Where generated model folders live: $QWENOPT_CACHE (default ~/.cache/qwenopt)/KIND/NAME-WEIGHTS-VARIANT-CFG.

    CFG is a hash of the source's config, so a changed config (YaRN for --max-model-len, say) never reuses a
    folder generated from another."""
    import hashlib

    root = Path(os.environ.get("QWENOPT_CACHE", Path.home() / ".cache" / "qwenopt"))
    name = source.name.strip("/").replace("/", "--")
    config = hashlib.sha256(json.dumps(source.config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return root / kind / f"{name}-{source.weights}-{variant}-{config}"


@contextlib.contextmanager
def atomic_folder(folder: Path):
    """Yield a sibling temp folder to fill; it replaces `folder` only once the block finishes, so a
    half-written model folder is never picked up (a leftover temp folder is cleared on the next try)."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    yield tmp
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def bundled_config(name: str) -> dict:
    text = resources.files("qwenopt").joinpath("configs", f"{name}.json").read_text()
    return json.loads(text)


def max_context(config: dict) -> int:
    """Longest sequence the config allows, YaRN rope scaling included."""
    base = int(config["max_position_embeddings"])
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}  # transformers 4 / 5 spelling
    if scaling.get("type", scaling.get("rope_type")) == "yarn":
        original = int(scaling.get("original_max_position_embeddings", base))
        return max(base, int(original * float(scaling["factor"])))
    return base


def yarn_scaling(config: dict, max_model_len: int | None) -> dict | None:
    """Qwen2.5's recipe past its native 32K: static YaRN, factor 4 (larger if asked for more than 128K)."""
    if not max_model_len or max_model_len <= max_context(config):
        return None
    native = int(config["max_position_embeddings"])
    factor = max(4.0, float(math.ceil(max_model_len / native)))
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": native}


def with_yarn(config: dict, max_model_len: int | None) -> dict:
    """A copy of the config with YaRN rope scaling where max_model_len is past its context (else unchanged)."""
    config = dict(config)
    yarn = yarn_scaling(config, max_model_len)
    if yarn and isinstance(config.get("rope_parameters"), dict):  # a transformers 5 dict keeps rope here
        config["rope_parameters"] = {**config["rope_parameters"], **yarn}
    elif yarn:  # the legacy key, which transformers 4.45+ reads and 5.x converts to rope_parameters
        config["rope_scaling"] = yarn
    return config


def default_weights(model: str) -> str:
    """random for the tiny model (it has no real weights), real otherwise."""
    return "random" if model == "qwen2-tiny" else "real"


def resolve_model(model: str, weights: str | None = None, quant: str = "none") -> ModelSource:
    """Turn --model/--weights into a source; weights default to random for the tiny model, real otherwise."""
    if weights is not None and weights not in WEIGHTS:
        raise QwenoptError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if model in BUNDLED:
        weights = weights or default_weights(model)
        config = bundled_config(model)
        if weights == "random":
            return ModelSource(model, "random", config)
        if model not in HUB_IDS:
            raise QwenoptError(f"{model!r} exists only with random weights: use --weights random")
        return ModelSource(model, "real", config, HUB_IDS[model][quant])
    weights = weights or default_weights(model)
    folder = Path(model)
    if folder.is_dir():
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise QwenoptError(f"model folder {model!r} has no config.json")
        config = json.loads(config_file.read_text())
    elif folder.exists() or model.count("/") != 1:
        raise QwenoptError(
            f"--model {model!r} is neither a bundled name ({', '.join(BUNDLED)}), a model folder, nor a Hub id (org/name)"
        )
    else:
        config = _hub_config(model)
    return ModelSource(model, weights, config, None if weights == "random" else model)


def _hub_config(model_id: str) -> dict:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id).to_dict()
    except Exception as exc:  # network, auth, unknown id: all one message for the user
        raise QwenoptError(f"cannot read the config of {model_id!r} from the Hub: {exc}".splitlines()[0]) from None
