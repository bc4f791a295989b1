"""The result files: one CSV line per row, appended under a lock, plus a JSON Lines sidecar of raw samples.

Every row is one `os.write` to a file opened O_APPEND, under an exclusive `fcntl.flock`, so several
processes appending to one file lose nothing and a killed writer can leave at most a torn last line.
Readers drop such a line (it has no newline, and only a killed writer leaves one); the next writer
trims it under the lock before appending. A file whose header lacks a column added later (ADDED_LATER)
is rewritten once, under the lock, with the new header; any other header is refused.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from .errors import QwenoptError
from .schema import (  # noqa: F401  re-exported for the modules that read and write rows
    ADDED_LATER, COLUMNS, FINGERPRINT, IDENTITY, INT_COLUMNS, LOAD_COLUMNS, LOAD_SCHEMA_VERSION, METRICS,
    SCHEMA_VERSION, STATUSES, TEXT_COLUMNS,
)

PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")


def check_output(path: str | Path, suffix: str | None = ".csv", inputs=(), option: str = "--out") -> Path:
    """Refuse an output path that cannot be written, before any work: a directory, a pseudo-filesystem,
    an unwritable folder, another suffix, or one of the command's own input files."""
    if str(path).strip() == "":
        raise QwenoptError(f"{option} is empty")
    path = Path(path)
    if suffix and path.suffix != suffix:
        raise QwenoptError(f"{option} must name a {suffix} file, got {path}")
    real = Path(os.path.realpath(path))
    if any(real == Path(root) or Path(root) in real.parents for root in PSEUDO_FILESYSTEMS):
        raise QwenoptError(f"{option} {path} is on {real.parts[1] and '/' + real.parts[1]}, not a place for files")
    if real.is_dir():
        raise QwenoptError(f"{option} {path} is a directory; name a file in it")
    for given in inputs:
        if given is not None and Path(os.path.realpath(given)) == real:
            raise QwenoptError(f"{option} {path} is also an input of this command; choose another {option}")
    if real.exists():
        if not real.is_file() or not os.access(real, os.W_OK):
            raise QwenoptError(f"{option} {path} is not a writable file")
        return path
    ancestor = real.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise QwenoptError(f"{option} {path}: cannot create files under {ancestor}")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write a whole file at once (temp file + rename): readers see the old file or the new, never half."""
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


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _whole_lines(path: Path, text: str) -> str:
    """The text up to its last newline: a tail without one is a row torn by a killed writer."""
    if text and not text.endswith("\n") and "\n" in text:
        _warn(f"{path}: dropped a torn last line (a writer was killed mid-row)")
        return text[: text.rindex("\n") + 1]
    return text


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV of whole lines: a torn last row (a killed writer) is dropped with a warning, never read as a row."""
    try:
        text = _whole_lines(path, Path(path).read_text())
        return pd.read_csv(io.StringIO(text), dtype={column: str for column in TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise QwenoptError(f"{path} is not a readable CSV: {str(exc).splitlines()[0]}") from None


def _cell(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        return repr(float(value))
    return str(value)


def _csv_line(values: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_cell(v) for v in values])
    return buffer.getvalue()


def _header(fd: int) -> list[str] | None:
    """The first line of an open file as column names; None for an empty file."""
    head = b""
    while b"\n" not in head:
        chunk = os.pread(fd, 65536, len(head))
        if not chunk:
            break
        head += chunk
    if not head:
        return None
    return next(csv.reader([head.split(b"\n", 1)[0].decode()]), [])


def _is_older_header(header: list[str], columns: list[str]) -> bool:
    """A header of this file kind written before some ADDED_LATER columns existed."""
    return [c for c in columns if c in header] == header and all(c in ADDED_LATER for c in columns if c not in header)


def _rewrite_with_columns(path: Path, header: list[str], columns: list[str], line: str) -> None:
    """Give an older file the later columns (empty in its rows), text kept exactly, then the new line."""
    old = list(csv.reader(io.StringIO(_whole_lines(path, path.read_text()))))[1:]
    body = "".join(_csv_line([dict(zip(header, values)).get(c) for c in columns]) for values in old)
    atomic_write_text(path, _csv_line(columns) + body + line)


def _open_locked(path: Path) -> int:
    """Open for appending and take the exclusive lock on the file that is at `path` now (a writer that
    rewrote it may have replaced the inode while we waited)."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def append_csv(path: str | Path, row: dict, columns: list[str]) -> None:
    """Append one row as one CSV line, under an exclusive lock, in one write (the header first in a new file).

    A file with other columns is refused; one from before an ADDED_LATER column is rewritten once with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path)
    try:
        size = _trim_torn_tail(fd, path)
        header = _header(fd) if size else None
        line = _csv_line([row.get(c) for c in columns])
        if header is None:
            os.write(fd, (_csv_line(columns) + line).encode())
        elif header == columns:
            os.write(fd, line.encode())
        elif _is_older_header(header, columns):
            _rewrite_with_columns(path, header, columns, line)
        else:
            raise QwenoptError(f"{path} has other columns than this command writes; choose another --out")
    finally:
        os.close(fd)  # closing releases the lock


def sidecar_path(csv_path: Path) -> Path:
    """The JSON Lines sidecar of raw samples: one record per result row, appended beside the CSV."""
    return Path(csv_path).with_suffix(".samples.jsonl")


def legacy_sidecar_path(csv_path: Path) -> Path:
    """Where files written before the JSONL sidecar kept their samples (one JSON list, rewritten per cell)."""
    return Path(csv_path).with_suffix(".samples.json")


def _trim_torn_tail(fd: int, path: Path) -> int:
    """Cut a last line without a newline (a killed writer's; no live writer holds the lock) so the next line
    does not run into it; returns the file's size after."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        size = os.pread(fd, size, 0).rfind(b"\n") + 1
        _warn(f"{path}: trimmed a torn last line (a writer was killed mid-row)")
        os.ftruncate(fd, size)
    return size


def append_samples(csv_path: str | Path, record: dict) -> None:
    """Append one row's raw samples as a single JSON line, under an exclusive lock, in one write."""
    append_jsonl(sidecar_path(Path(csv_path)), record)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a single JSON line, under an exclusive lock, in one write.

    A file kept compressed (PATH.gz, see read_jsonl) is unpacked into PATH first, under the same lock, so the
    records before it stay with the new ones instead of being hidden behind a fresh PATH."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        packed = path.with_name(path.name + ".gz")
        if packed.is_file() and not os.fstat(fd).st_size:
            os.write(fd, gzip.decompress(packed.read_bytes()))
            packed.unlink()
        _trim_torn_tail(fd, path)
        os.write(fd, line)
    finally:
        os.close(fd)  # closing releases the lock


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSON Lines file (none if it is missing; a finished one may be kept gzip-compressed as
    PATH.gz); a torn line (a killed writer) is skipped."""
    path = Path(path)
    packed = path.with_name(path.name + ".gz")
    if path.is_file():
        text = path.read_text()
    elif packed.is_file():
        text = gzip.decompress(packed.read_bytes()).decode()
    else:
        return []
    records: list[dict] = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only a writer killed mid-line leaves one; the lines around it are whole
    return records


def read_samples(csv_path: str | Path) -> list[dict]:
    """Every sample record of a result file, old JSON sidecar first; a torn last line (a killed writer) is skipped.

    A sidecar no run appends to any more may be kept gzip-compressed (.samples.jsonl.gz): read the same."""
    csv_path = Path(csv_path)
    records: list[dict] = []
    legacy = legacy_sidecar_path(csv_path)
    if legacy.is_file():
        records += json.loads(legacy.read_text())
    return records + read_jsonl(sidecar_path(csv_path))


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a result CSV, refusing files that are not qwenopt results of this schema."""
    path = Path(path)
    if not path.is_file():
        raise QwenoptError(f"no such result file: {path}")
    frame = read_csv(path)
    for column in ADDED_LATER:
        if column in COLUMNS and column not in frame.columns:
            frame.insert(len(frame.columns), column, pd.NA)
    frame = frame[[c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise QwenoptError(f"{path} is not a qwenopt result file: missing columns {', '.join(missing[:5])}")
    versions = set(frame["schema_version"].dropna().astype(int))
    if versions - {SCHEMA_VERSION}:
        raise QwenoptError(f"{path} has schema version {sorted(versions)}, this qwenopt reads {SCHEMA_VERSION}")
    return frame


def read_load(path: str | Path) -> pd.DataFrame:
    """Read a load result CSV (schema v2), refusing another load schema version; columns in schema order."""
    frame = read_csv(Path(path))
    versions = set(pd.to_numeric(frame["schema_version"], errors="coerce").dropna().astype(int))
    if versions - {LOAD_SCHEMA_VERSION}:
        raise QwenoptError(f"{path} has load schema version {sorted(versions)}, "
                           f"this qwenopt reads {LOAD_SCHEMA_VERSION}")
    return frame.reindex(columns=LOAD_COLUMNS + [c for c in frame.columns if c not in LOAD_COLUMNS])


def read_rows(path: str | Path, run_id: str | None = None) -> list[dict]:
    """The rows of a result file as dicts, only one run's if run_id is given; none for a missing file."""
    if not Path(path).is_file():
        return []
    rows = read_results(path).to_dict("records")
    return [r for r in rows if run_id is None or r["run_id"] == run_id]


class ResultWriter:
    """Appends rows (and their raw samples) to a result CSV, one locked line per cell."""

    def __init__(self, path: str | Path):
        self.path = check_output(path)
        if self.path.exists() and self.path.stat().st_size:
            read_results(self.path)  # refuse a file of another kind before any cell runs

    def append(self, row: dict, samples: list[dict], per_gpu_peak_gib: list[float] | None = None,
               warmup_s: list[float] | None = None) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        append_csv(self.path, row, COLUMNS)
        key = {k: row.get(k) for k in ("run_id", "regime", "batch_size", "input_len", "output_len", "status")}
        append_samples(self.path, {**key, "gpu_mem_peak_gib_per_gpu": per_gpu_peak_gib or [], "warmup_s": warmup_s or [],
                                   "samples": samples})
