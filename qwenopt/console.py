"""What a person sees while a sweep runs and after: progress and logs on stderr, tables on stdout.

Tables fit 80 columns (pipes and CI logs) without cutting a number: each numeric column is at least as
wide as its longest value, and headers wrap instead.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich import box
from rich.markup import escape
from rich.table import Table

from .stats import RELIABLE_P99_SAMPLES

console = Console(stderr=True)  # progress and logs
errors = Console(stderr=True)  # one-line errors always go to stderr
stdout = Console()  # tables and results: what `qwenopt ... > file` keeps


def pipe_table(headers, rows) -> str:
    """A Markdown pipe table (README, CI comment, summary.md): one line per row, a '|' inside a cell escaped."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)])


@contextmanager
def sweep_progress(plan):
    """Yield an on_iteration callback that advances one bar over every warm-up and timed iteration."""
    per_cell = plan.options.warmup + plan.options.repeats
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    ) as progress:
        total = None if plan.search else len(plan.cells) * per_cell  # a search does not know its cells ahead
        task = progress.add_task(plan.spec.name, total=total)

        def on_iteration(cell, phase: str) -> None:
            label = f"{plan.spec.name} bs={cell.batch_size} in={cell.input_len} out={cell.output_len} {phase}"
            progress.update(task, advance=1, description=label)

        yield on_iteration


@contextmanager
def load_progress(total: int):
    """Yield a callback that advances one bar per finished request."""
    with Progress(TextColumn("[bold]load"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("load", total=total)
        yield lambda: progress.advance(task)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value, digits: int = 1) -> str:
    return "-" if _missing(value) else f"{value:,.{digits}f}"


def fitted_table(title: str, headers: list[str], rows: list[list[str]], numeric: set[str] = frozenset(),
                 caption: str | None = None) -> Table:
    """A table whose numeric columns never shrink below their longest value (so nothing is cut to "…");
    text columns and headers fold or wrap instead."""
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, caption=caption, caption_justify="left", padding=0,
                  pad_edge=False)
    for i, name in enumerate(headers):
        if name in numeric:
            widest = max([len(row[i]) for row in rows] + [len(line) for line in name.split("\n")])
            table.add_column(name, justify="right", min_width=widest, no_wrap=True)
        else:
            table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


# Headers broken by hand, so that every column is as narrow as its numbers and the table fits 80 columns.
SUMMARY = ["batch", "in", "out", "status", "out\ntok/s", "P50 s", "P99 s", "TTFT\nP50 ms", "TPOT\nP50 ms",
           "GPU\npeak\nGiB", "roof-\nline\neff"]


def _p99_rests_on(row: dict) -> float:
    """Independent timings under the row's P99 (`timings`; rows from before that column: `samples`)."""
    timings = row.get("timings")
    return row.get("samples") or 0 if _missing(timings) else timings


def summary_table(rows: list[dict]) -> Table:
    cells, reasons, flagged = [], [], False
    for r in rows:
        p99 = _fmt(r.get("latency_p99_s"), 3)
        if r.get("status") == "ok" and _p99_rests_on(r) < RELIABLE_P99_SAMPLES:
            p99 += "*"
            flagged = True
        status = r["status"] if r["status"] == "ok" else f"[red]{escape(str(r['status']))}[/red]"
        if r["status"] != "ok" and r.get("error") and not _missing(r.get("error")):
            reasons.append(f"bs={r['batch_size']} in={r['input_len']} out={r['output_len']}: "
                           f"{escape(str(r['status']))}: {escape(str(r['error']))}")
        cells.append([
            str(r["batch_size"]), str(r["input_len"]), str(r["output_len"]), status, _fmt(r.get("output_tok_s")),
            _fmt(r.get("latency_p50_s"), 3), p99, _fmt(r.get("ttft_p50_ms")), _fmt(r.get("tpot_p50_ms"), 2),
            _fmt(r.get("gpu_mem_peak_gib"), 2),
            "-" if _missing(r.get("roofline_eff")) else f"{r['roofline_eff']:.0%}",
        ])
    notes = []
    if flagged:
        notes.append(f"* P99 from fewer than {RELIABLE_P99_SAMPLES} independent timings (a static batch gives one "
                     "per repeat): read it as the maximum")
    notes += reasons
    numeric = set(SUMMARY) - {"status"}
    return fitted_table("qwenopt bench", SUMMARY, cells, numeric, "\n".join(notes) or None)
