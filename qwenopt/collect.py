"""Reading any set of result files, each by its kind, so `matrix` and `report` can take a whole folder.

A file's kind comes from its header (schema.py owns the columns): bench (files named tune_* hold bench rows
too: the tuner's probes), load (row v2), quality and matrix. A file of no qwenopt kind, or one this version
cannot read, is named in one warning and skipped; it never stops the others. A folder stands for its *.csv.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import QwenoptError
from .schema import ADDED_LATER, BENCH_COLUMNS, LOAD_COLUMNS, QUALITY_COLUMNS

SIDECAR_SUFFIXES = (".samples.json", ".samples.jsonl", ".samples.jsonl.gz")  # read with their CSV, never on their own
PRE_V2_LOAD = {"launched_regime", "served_model", "mismatched"}  # the load header before schema_version 2


@dataclass
class Collection:
    """Rows of every kind found, each with a `file` column; `kinds` maps each file read to its kind."""

    bench: pd.DataFrame  # bench and tune rows (tune files are bench rows of the tuner's probes)
    load: pd.DataFrame
    quality: pd.DataFrame
    matrix: pd.DataFrame
    kinds: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # one line per skipped file

    def files(self, *kinds: str) -> list[str]:
        return [f for f, k in self.kinds.items() if k in kinds]


def expand(paths: list, warnings: list[str] | None = None) -> list[Path]:
    """The files to read: each path as given, a folder as its *.csv files; a missing path is bad input."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.csv"))
            if not found and warnings is not None:
                warnings.append(f"skipped {path}: a folder with no .csv files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise QwenoptError(f"no such result file: {path}")
    return list(dict.fromkeys(files))


def kind_of(path: Path, columns: list[str]) -> str | None:
    """The result kind a header belongs to, or None."""
    have = set(columns)
    if have >= set(BENCH_COLUMNS) - set(ADDED_LATER):
        return "tune" if path.name.startswith("tune_") else "bench"
    if have >= set(LOAD_COLUMNS) - set(ADDED_LATER):
        return "load"
    if have >= set(QUALITY_COLUMNS):
        return "quality"
    if {"config", "meets_slo"} <= have:
        return "matrix"
    return None


def _read(path: Path, kind: str) -> pd.DataFrame:
    from .results import read_csv, read_load, read_results

    if kind in ("bench", "tune"):
        return read_results(path)
    if kind == "load":
        return read_load(path)
    return read_csv(path)


def collect(paths: list) -> Collection:
    """Read every file given (folders as their CSVs), sorted by kind; skip, with a warning, what is not ours."""
    frames: dict[str, list[pd.DataFrame]] = {"bench": [], "load": [], "quality": [], "matrix": []}
    kinds: dict[str, str] = {}
    warnings: list[str] = []
    for path in expand(paths, warnings):
        if path.name.endswith(SIDECAR_SUFFIXES):
            continue
        try:
            columns = list(pd.read_csv(path, nrows=0).columns)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
            warnings.append(f"skipped {path}: not a readable CSV ({str(exc).splitlines()[0]})")
            continue
        kind = kind_of(path, columns)
        if kind is None:
            if PRE_V2_LOAD <= set(columns):
                warnings.append(f"skipped {path}: a load file from before load schema v2 (no send lag, so a "
                                f"client-bound level cannot be told apart); rerun `qwenopt load` for v2 rows")
            else:
                warnings.append(f"skipped {path}: not a qwenopt result file (no bench, load, quality or matrix header)")
            continue
        try:
            frame = _read(path, kind)
        except (QwenoptError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            warnings.append(f"skipped {path}: {exc}")
            continue
        frame.insert(len(frame.columns), "file", str(path))
        frames["bench" if kind == "tune" else kind].append(frame)
        kinds[str(path)] = kind
    joined = {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in frames.items()}
    return Collection(**joined, kinds=kinds, warnings=warnings)
