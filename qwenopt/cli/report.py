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
    base: Path = typer.Argument(..., help="The baseline result CSV."),
    new: Path = typer.Argument(..., help="The new result CSV, from the same sweep."),
    max_regression: str = typer.Option("5%", help="Largest tolerated worsening of any gated metric, e.g. 5% or 0.05."),
    metric: Optional[list[str]] = typer.Option(None, help="Metric to gate on (repeatable): output_tok_s, req_s, "
                                                          "latency_p50_s, latency_p99_s, ttft_p50_ms, tpot_p50_ms.",
                                               show_default="output_tok_s, latency_p50_s, tpot_p50_ms"),
):
    """CI gate: compare two result files cell by cell; exit 1 on a regression, a missing or a failed cell."""
    from rich.table import Table

    from ..compare import DEFAULT_METRICS, compare, failed, parse_threshold
    from ..console import console
    from ..results import read_results

    try:
        threshold = parse_threshold(max_regression)
        report = compare(read_results(base), read_results(new), threshold, tuple(metric or DEFAULT_METRICS))
    except QwenoptError as exc:
        fail(str(exc))
    table = Table(title=f"{new} against {base} (tolerance {threshold:.1%})", header_style="bold")
    for name in ("regime", "quant", "batch", "in", "out", "metric", "base", "new", "change", "verdict"):
        table.add_column(name, justify="left" if name in ("regime", "quant", "metric", "verdict") else "right")
    for r in report.to_dict("records"):
        verdict = r["verdict"] if r["verdict"] == "ok" else f"[red]{r['verdict']}[/red]"
        table.add_row(r["regime"], r["quant"], r["batch_size"], r["input_len"], r["output_len"], r["metric"],
                      f"{r['base']:.4g}", "-" if r["new"] is None else f"{r['new']:.4g}",
                      "-" if r["change"] is None else f"{r['change']:+.1%}", verdict)
    console.print(table)
    if failed(report):
        console.print(f"[red]regression:[/red] {int((report['verdict'] != 'ok').sum())} of {len(report)} checks failed")
        raise typer.Exit(1)
    console.print(f"no regression beyond {threshold:.1%} in {len(report)} checks")


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
