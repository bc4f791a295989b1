"""Reading saved results: the cost matrix, the CI gate and the HTML report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import QwenoptError
from .app import REPORT, command, fail


@command(REPORT)
def matrix(
    files: list[Path] = typer.Argument(..., help="Result CSVs written by `qwenopt bench`."),
    slo_p99: float = typer.Option(1.0, help="P99 latency target in seconds: each configuration is costed at its "
                                            "highest-throughput cell within it."),
    gpu_hour_usd: float = typer.Option(2.5, help="Price of one GPU-hour, for $ per 1M output tokens."),
    baseline: Optional[str] = typer.Option(None, help="Configuration the unit cost is relative to.",
                                           show_default="hf-fp16 if present"),
    input_len: Optional[int] = typer.Option(None, help="Workload to compare at (needed when the files hold several)."),
    output_len: Optional[int] = typer.Option(None, help="Workload to compare at (needed when the files hold several)."),
    out: Optional[Path] = typer.Option(None, help="Also write the matrix to this CSV."),
):
    """The cost-comparison matrix: requests per GPU, latency, utilisation, requests/day, relative unit cost, $ per 1M tokens."""
    import pandas as pd
    from rich.table import Table

    from ..console import console
    from ..cost import cost_matrix
    from ..results import atomic_write_text, read_results

    try:
        frame = pd.concat([read_results(f) for f in files], ignore_index=True)
        table_frame = cost_matrix(frame, slo_p99, gpu_hour_usd, baseline, input_len, output_len)
        if out:
            atomic_write_text(out, table_frame.to_csv(index=False))
    except QwenoptError as exc:
        fail(str(exc))
    first = table_frame.iloc[0]
    table = Table(title=f"cost at P99 <= {slo_p99:g} s, input {first['input_len']} / output {first['output_len']} tokens, "
                        f"${gpu_hour_usd:g} per GPU-hour, unit cost relative to {table_frame.attrs['baseline']}",
                  header_style="bold")
    for name in ("config", "batch", "req/GPU", "mean s", "P99 s", "GPU util %", "req/s", "requests/day",
                 "unit cost", "$ / 1M out tok"):
        table.add_column(name, justify="left" if name == "config" else "right")
    for r in table_frame.to_dict("records"):
        if not r["meets_slo"]:
            table.add_row(r["config"], *["-"] * 8, "[yellow]no cell meets the SLO[/yellow]")
            continue
        table.add_row(r["config"], str(r["batch_size"]), f"{r['requests_per_gpu']:g}", f"{r['latency_mean_s']:.3f}",
                      f"{r['latency_p99_s']:.3f}", f"{r['gpu_util_pct']:.0f}" if r["gpu_util_pct"] == r["gpu_util_pct"] else "-",
                      f"{r['req_s']:.2f}", f"{r['requests_per_day']:,.0f}", f"{r['relative_unit_cost']:.2f}x",
                      f"{r['usd_per_1m_output_tokens']:.2f}")
    console.print(table)


@command(REPORT, "compare")
def compare_command(
    base: Path = typer.Argument(..., help="The baseline result CSV (bench or load rows), its .samples.jsonl beside "
                                          "it."),
    new: Path = typer.Argument(..., help="The new result CSV, from the same sweep or load levels."),
    max_regression: str = typer.Option("5%", help="Largest tolerated worsening of a gated metric, e.g. 5% or 0.05; "
                                                  "the default for metrics without their own --threshold."),
    threshold: Optional[list[str]] = typer.Option(None, help="A metric's own tolerance (repeatable), e.g. "
                                                             "latency_p99_s=10%."),
    metric: Optional[list[str]] = typer.Option(None, help="Metric to gate on (repeatable): output_tok_s, req_s, "
                                                          "latency_p50_s, latency_p99_s, ttft_p50_ms, tpot_p50_ms, ...",
                                               show_default="output_tok_s, latency_p50_s, tpot_p50_ms"),
    confidence: float = typer.Option(0.95, help="Confidence of the bootstrap interval of each change."),
    fail_on_noisy: bool = typer.Option(False, help="Also fail when a change is too noisy to judge (the interval "
                                                   "straddles no change and reaches past the threshold)."),
    output_format: str = typer.Option("table", "--format",
                                      help="table (people), md (a CI comment) or json (machines)."),
):
    """CI gate: compare two result files cell by cell against the noise of both; exit 1 on a regression, an
    unusable (missing, NaN or zero) metric, or a missing or failed cell.

    With raw samples on both sides each change gets a seeded bootstrap interval over the independent timings
    (a bench cell's repeats, a load level's requests): a regression is a change whose whole interval is worse than
    no change and reaches past the threshold; `noisy` (interval straddles no change) is shown and passes unless
    --fail-on-noisy. Without samples the point change is compared with the threshold (column `method`).
    """
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..compare import (DEFAULT_METRICS, as_json, cell_label, compare, failing, formatted, markdown,
                           parse_threshold, parse_thresholds, read_any)
    from ..results import read_samples

    if output_format not in ("table", "md", "json"):
        fail(f"--format must be table, md or json, got {output_format!r}")
    if not 0.5 <= confidence < 1:
        fail(f"--confidence must be at least 0.5 and below 1, got {confidence}")
    default = parse_threshold(max_regression)
    thresholds = parse_thresholds(threshold)
    base_kind, base_frame = read_any(base)
    new_kind, new_frame = read_any(new)
    if base_kind != new_kind:
        fail(f"{base} holds {base_kind} rows and {new} holds {new_kind} rows: compare like with like")
    report = compare(base_frame, new_frame, default, tuple(metric or DEFAULT_METRICS), kind=base_kind,
                     thresholds=thresholds, base_samples=read_samples(base), new_samples=read_samples(new),
                     confidence=confidence)
    bad = failing(report, fail_on_noisy)
    noisy = int((report["verdict"] == "noisy").sum())
    summary = (f"{int(bad.sum())} of {len(report)} checks failed" if bad.any()
               else f"no regression beyond the threshold in {len(report)} checks")
    if noisy:
        summary += f"; {noisy} too noisy to judge (more --repeats narrow the interval)"
    title = f"{new} against {base} (default tolerance {default:.1%}, {confidence:.0%} intervals)"
    if output_format == "json":
        print(as_json(report, not bad.any(), summary))
    elif output_format == "md":
        print(markdown(report, title, ("**FAILED**: " if bad.any() else "passed: ") + summary))
    else:
        out = Console()  # the table is the command's output: stdout
        table = Table(title=escape(title), header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
        for name in ("metric", "base", "new", "change [interval]", "method", "verdict"):  # numbers never wrap
            text = name in ("metric", "method", "verdict")
            table.add_column(name, overflow="fold", no_wrap=not text, justify="left" if text else "right")
        cell = None
        for r, shown, is_bad in zip(report.to_dict("records"), formatted(report), bad):
            if shown["cell"] != cell:
                cell = shown["cell"]
                table.add_row(f"[bold]{escape(cell)}[/bold]", end_section=False)
            interval = "" if r["ci_low"] is None or r["ci_low"] != r["ci_low"] else \
                f" [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
            metric_name = r["metric"] + ("" if r["threshold"] == default else f" (tol {r['threshold']:.0%})")
            method = shown["method"].replace("bootstrap ", "boot ")
            colour = "red" if is_bad else "green" if r["verdict"] == "ok" else "yellow"
            table.add_row(metric_name, shown["base"], shown["new"], shown["change"] + interval, escape(method),
                          f"[{colour}]{escape(r['verdict'])}[/{colour}]")
        out.print(table)
        for r in report[bad].to_dict("records"):  # each failure in full on one line, whatever the width
            out.print(f"[red]failed:[/red] {escape(cell_label(r))} {r['metric']}: {escape(r['verdict'])}",
                      highlight=False, soft_wrap=True)
        out.print(("[red]regression:[/red] " if bad.any() else "") + escape(summary), highlight=False)
    if bad.any():
        raise typer.Exit(1)


@command(REPORT)
def report(
    files: list[Path] = typer.Argument(..., help="Result CSVs written by `qwenopt bench`."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    slo_p99: Optional[float] = typer.Option(None, help="Add the cost matrix at this P99 latency target (seconds)."),
    gpu_hour_usd: float = typer.Option(2.5, help="Price of one GPU-hour, for the cost matrix."),
):
    """A self-contained HTML report: throughput charts per workload, the cost matrix, every cell."""
    import pandas as pd

    from ..console import console
    from ..report import build_report
    from ..results import atomic_write_text, read_results

    try:
        frame = pd.concat([read_results(f) for f in files], ignore_index=True)
        atomic_write_text(output, build_report(frame, [str(f) for f in files], slo_p99, gpu_hour_usd))
    except QwenoptError as exc:
        fail(str(exc))
    console.print(f"wrote {output} ({len(frame)} cells from {len(files)} files)", highlight=False)
