"""`qwenopt confirm`: a `tune --launch` winner against vLLM's defaults again, on fresh starts and the same arrivals,
before anyone acts on its gain (qwenopt/serving/tune_confirm.py says why)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import QwenoptError
from .app import MEASURE, command


@command(MEASURE)
def confirm(
    tune_csv: Path = typer.Argument(..., help="The search's result CSV (`tune --launch --out`); its .trials.jsonl "
                                    "sits next to it."),
    out_dir: Optional[Path] = typer.Argument(None, help="Folder of the confirm's rows (confirm.csv), server logs and "
                                             "summary.md; rounds and trials add to it.",
                                             show_default="TUNE_CSV without .csv, plus .confirm"),
    rates: Optional[str] = typer.Option(None, help="The ladder, comma-separated req/s; give one ladder to every "
                                        "round and trial of a folder.",
                                        show_default="five from 60% of the lower best level to the higher, and one step above"),
    requests: int = typer.Option(300, help="Measured requests per level."),
    warmup: int = typer.Option(20, help="Unmeasured requests first in each level."),
    round_: int = typer.Option(0, "--round", help="The round, and the seed of its arrivals: both configurations of a "
                               "round see the same ones."),
    trial: Optional[int] = typer.Option(None, help="The trial to re-measure against the defaults; 0: an A/A run, "
                                        "the defaults on a second start (the spread a start alone makes).",
                                        show_default="the search's winner"),
    only: Optional[str] = typer.Option(None, help="defaults or trial (with --trial 0: the second start): one server "
                                       "start in this call (where a host limits a command's time)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the `qwenopt load` commands only."),
    table_only: bool = typer.Option(False, "--table-only", help="Print the table and verdict of what the folder "
                                    "holds; measure nothing."),
):
    """Re-measure a `tune --launch` winner against vLLM's defaults: fresh starts, the same arrivals.

    The winner (or --trial N) and the defaults, each on a fresh server start, on one ladder of rates with the
    round's arrivals; a trial is confirmed when it holds the SLO up to a higher rate than the defaults in every round
    that measured both. Exit 1 when a verdict says not confirmed."""
    from ..serving import tune_confirm as tc
    from ..serving.schedule import parse_rates
    from ..serving.tune_trial import offered_rate

    if only is not None and only not in tc.CONFIGS:
        raise QwenoptError(f"--only takes defaults or trial, got {only!r}")
    if requests < 1 or warmup < 0:
        raise QwenoptError("--requests must be >= 1 and --warmup >= 0")
    if not tune_csv.is_file():
        raise QwenoptError(f"{tune_csv}: no such search result (the CSV of `tune --launch --out`)")
    ladder = parse_rates(rates, "--rates", sweep=False) if rates is not None else None
    out = out_dir or tune_csv.with_suffix(".confirm")
    default, best = tc.pick(tune_csv, trial)
    again = trial == 0  # an A/A run: the defaults on two starts, what a start alone moves the goodput
    if best["trial"] == default["trial"] and not again:
        typer.echo("vLLM's defaults won the search: nothing to confirm (--trial 0 measures them on two starts, "
                   "the spread a winner's gain must exceed)")
        return
    labels = tc.labels_of(tune_csv)
    if not table_only:
        ladder = ladder or tc.ladder(offered_rate(default), offered_rate(best))
        chosen = [(name, level) for name, level in zip(tc.CONFIGS, (default, best)) if only in (None, name)]
        if round_ % 2 and not again:  # counterbalanced: odd rounds start the trial first, so an order effect (the
            chosen.reverse()  # A/A's second start was slower at every rung: results/h200/tune/v2/aa_fp16) hits both
        what = (f"vLLM's defaults on {len(chosen)} start(s) (A/A)" if again else
                f"{', '.join(labels[level['engine_args']] for _, level in chosen)} (trial {best['trial']}: "
                f"{best['trial_config']})")
        typer.echo(f"round {round_}: {what} at {ladder} req/s, {requests} requests a level after {warmup} unmeasured")
        if not dry_run:
            out.mkdir(parents=True, exist_ok=True)
        for name, level in chosen:
            label = "defaults" if name == "defaults" else "defaults-again" if again else f"trial{best['trial']}"
            argv = tc.load_command(level, ladder, requests, warmup, out, f"{label}_{round_}", seed=round_)
            typer.echo("$ " + " ".join(argv))
            if not dry_run:
                typer.echo(f"exit {tc.run_child(argv)}")
    if dry_run or not (out / "confirm.csv").exists():
        return
    text = tc.table(out, labels) + "\n\n" + tc.verdict(out, labels)
    (out / "summary.md").write_text(text + "\n")
    typer.echo(text)
    if f"is {tc.NOT_CONFIRMED}" in text:
        raise typer.Exit(1)

