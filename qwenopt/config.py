"""Sweep files: the bench options in TOML or YAML, so a CI job or a colleague reruns exactly the same sweep."""
from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from .errors import QwenoptError


def load_config(path: str | Path, allowed: list[str]) -> dict:
    """Read a sweep file into option names (hyphens or underscores), refusing unknown keys by name."""
    path = Path(path)
    if not path.is_file():
        raise QwenoptError(f"no such config file: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise QwenoptError(f"config file must end in .toml, .yaml or .yml: {path}")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise QwenoptError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise QwenoptError(f"{path} must hold a table of options")
    data = data.get("bench", data)  # a [bench] table, or the options at the top level
    options = {str(key).replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise QwenoptError(f"{path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    for key in ("batch", "input_len", "output_len"):
        if isinstance(options.get(key), list):
            options[key] = ",".join(str(v) for v in options[key])
    return options
