"""The result row schema and its files: one tidy CSV row per cell plus a JSON sidecar of raw samples.

Every write rewrites the whole file to a temporary sibling and renames it over the old one, so a
crash or Ctrl-C at any moment leaves either the previous file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from .errors import QwenoptError
from .schema import (  # noqa: F401  re-exported for the modules that read and write rows
    ADDED_LATER, COLUMNS, FINGERPRINT, IDENTITY, INT_COLUMNS, METRICS, SCHEMA_VERSION, STATUSES,
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is for everyone who may read it
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise QwenoptError(f"{path} is not a readable CSV: {str(exc).splitlines()[0]}") from None


def append_csv(path: str | Path, row: dict, columns: list[str]) -> None:
    """Append one row to a small CSV of fixed columns, atomically; refuse a file with other columns."""
    path = Path(path)
    rows = []
    if path.exists():
        existing = _read_csv(path)
        older = [c for c in columns if c not in ADDED_LATER]
        if list(existing.columns) == older:  # written before a later fingerprint column: continue it
            existing = existing.reindex(columns=columns)
        if list(existing.columns) != columns:
            raise QwenoptError(f"{path} has other columns than this command writes; choose another --out")
        rows = existing.to_dict("records")
    frame = pd.DataFrame(rows + [{c: row.get(c) for c in columns}], columns=columns)
    atomic_write_text(path, frame.to_csv(index=False))


def sidecar_path(csv_path: Path) -> Path:
    """The JSON Lines sidecar of raw samples: one record per result row, appended beside the CSV."""
    return Path(csv_path).with_suffix(".samples.jsonl")


def legacy_sidecar_path(csv_path: Path) -> Path:
    """Where files written before the JSONL sidecar kept their samples (one JSON list, rewritten per cell)."""
    return Path(csv_path).with_suffix(".samples.json")


def append_samples(csv_path: str | Path, record: dict) -> None:
    """Append one row's raw samples as a single JSON line, under an exclusive lock, in one write."""
    import fcntl

    path = sidecar_path(Path(csv_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
    finally:
        os.close(fd)  # closing releases the lock


def read_samples(csv_path: str | Path) -> list[dict]:
    """Every sample record of a result file, old JSON sidecar first; a torn last line (a killed writer) is skipped."""
    csv_path = Path(csv_path)
    records: list[dict] = []
    legacy = legacy_sidecar_path(csv_path)
    if legacy.is_file():
        records += json.loads(legacy.read_text())
    path = sidecar_path(csv_path)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # only a writer killed mid-line leaves one; the lines around it are whole
    return records


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a result CSV, refusing files that are not qwenopt results of this schema."""
    path = Path(path)
    if not path.is_file():
        raise QwenoptError(f"no such result file: {path}")
    frame = _read_csv(path)
    for column in ADDED_LATER:
        if column not in frame.columns:
            frame.insert(len(frame.columns), column, pd.NA)
    frame = frame[[c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise QwenoptError(f"{path} is not a qwenopt result file: missing columns {', '.join(missing[:5])}")
    versions = set(frame["schema_version"].dropna().astype(int))
    if versions - {SCHEMA_VERSION}:
        raise QwenoptError(f"{path} has schema version {sorted(versions)}, this qwenopt reads {SCHEMA_VERSION}")
    return frame


class ResultWriter:
    """Appends rows (and their raw samples) to a result CSV, atomically, one cell at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix != ".csv":
            raise QwenoptError(f"--out must name a .csv file, got {self.path}")
        self.rows = read_results(self.path).to_dict("records") if self.path.exists() else []

    def append(self, row: dict, samples: list[dict], per_gpu_peak_gib: list[float] | None = None) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        self.rows.append({c: row.get(c) for c in COLUMNS})
        frame = pd.DataFrame(self.rows, columns=COLUMNS)
        atomic_write_text(self.path, frame.to_csv(index=False))
        key = {k: row.get(k) for k in ("run_id", "regime", "batch_size", "input_len", "output_len", "status")}
        append_samples(self.path, {**key, "gpu_mem_peak_gib_per_gpu": per_gpu_peak_gib or [], "samples": samples})
