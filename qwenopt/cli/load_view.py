"""What a person sees during `qwenopt load`: a progress bar per level on stderr, each level's table on stdout."""
from __future__ import annotations

import math
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..serving.metrics import tail_text

BAD = ("failed", "timeouts", "truncated", "short", "overlong")
CACHED_WARN = 0.2  # a prefix-cache hit share from which the table says the level's prefill was mostly skipped


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _pair(row: dict, a: str, b: str, digits: int = 1) -> str:
    return f"{_fmt(row[a], digits)} / {_fmt(row[b], digits)}"


def _status(row: dict) -> str:
    return {"ok": "ok", "client-bound": "[bold yellow]client-bound[/]"}.get(row["status"], f"[red]{row['status']}[/]")


FIGURES = [  # (label, cell of one row): the level's table, a line per figure
    ("status", _status),
    ("ok / sent", lambda r: f"{r['completed']} / {r['sent']}"),
    ("req/s", lambda r: _fmt(r["req_s"], 2)),
    ("output tok/s", lambda r: _fmt(r["output_tok_s"])),
    ("TTFT P50 / P99 ms", lambda r: _pair(r, "ttft_p50_ms", "ttft_p99_ms")),
    ("TPOT P50 / P99 ms", lambda r: _pair(r, "tpot_p50_ms", "tpot_p99_ms", 2)),
    ("ITL P50 / P99 ms", lambda r: _pair(r, "itl_p50_ms", "itl_p99_ms", 2)),
    ("E2EL P50 / P99 s", lambda r: _pair(r, "latency_p50_s", "latency_p99_s", 3)),
    ("slowest 1%: TTFT / decode / stalls s", lambda r: tail_text(r) or "-"),
    ("goodput req/s", lambda r: _fmt(r["goodput_req_s"], 2)),
    ("send lag P50 / P99 ms", lambda r: _pair(r, "send_lag_p50_ms", "send_lag_p99_ms", 2)),
]


def _label(mode: str, value) -> str:
    return f"{value:g} req/s" if mode == "open" else f"{value} users"


class LevelView:
    def __init__(self):
        self.out = Console(soft_wrap=True)  # tables: stdout, whole numbers never cut
        self.err = Console(stderr=True)
        self.progress: Progress | None = None
        self.reasons: Counter = Counter()

    def begin(self, number: int, mode: str, value, expected: float | None):
        """Start the level's progress bar; returns the callback the runner calls per finished request."""
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[bad]}"), TimeElapsedColumn(), console=self.err,
                                 transient=True)
        self.progress.start()
        task = self.progress.add_task(f"level {number}: {_label(mode, value)}", total=expected, bad="")
        bad = Counter()

        def on_record(record) -> None:
            if record.outcome != "ok":
                bad[record.outcome] += 1
                self.reasons[f"{record.outcome}: {record.error}"[:160]] += 1
            self.progress.update(task, advance=1, bad=", ".join(f"{n} {k}" for k, n in bad.items()))

        return on_record

    def finish(self, rows: list[dict]) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None
        total = rows[-1]
        title = f"level {total['level']}: " + _label(total["mode"], total["rate"] if total["mode"] == "open"
                                                     else total["concurrency"])
        table = Table(title=title, header_style="bold")  # one column per class: fits 80 columns, nothing cut
        table.add_column("", no_wrap=True)
        for row in rows:
            table.add_column(row["class"], justify="right", no_wrap=True)
        for name, cell in FIGURES:
            table.add_row(name, *(cell(row) for row in rows))
        hit = total.get("prefix_cache_hit_rate")
        known = hit is not None and math.isfinite(hit)  # only servers that export it (vLLM): the level's, every class
        if known:
            table.add_row("prefix cache hit %", *(_fmt(100 * hit) for _ in rows))
        bad = {k: total[k] for k in BAD if total.get(k)}
        if bad:
            table.caption = "not ok: " + ", ".join(f"{n} {k}" for k, n in bad.items())
        if known and hit >= CACHED_WARN:  # a file's repeated prompts, or a server that ran them before: not the prefill the level asks
            table.caption = (table.caption + "; " if table.caption else "") + \
                f"the server's prefix cache served {100 * hit:.0f}% of the prompt tokens: prefill mostly skipped"
        if total["status"] == "client-bound":
            table.caption = (table.caption + "; " if table.caption else "") + \
                "client-bound: the load generator fell behind its schedule, these are not the server's figures"
        self.out.print(table)

    @staticmethod
    def bad_requests(rows: list[dict]) -> int:
        return sum(r.get(k) or 0 for r in rows if r["class"] == "all" for k in BAD)

    def summary(self, rows: list[dict], out: str) -> None:
        levels = [r for r in rows if r["class"] == "all"]
        bad = self.bad_requests(rows)
        self.out.print(f"{len(levels)} level(s), {sum(r['completed'] for r in levels)} requests ok, {bad} not ok; "
                       f"wrote {out}", highlight=False)
        for reason, count in self.reasons.most_common(10):
            self.out.print(f"  {count} x {reason}", highlight=False)
