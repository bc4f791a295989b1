"""`qwenopt confirm` (qwenopt/serving/tune_confirm.py): which trials it re-measures, at which rates, with which
`qwenopt load` command, and its verdict."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.errors import QwenoptError

REPO = Path(__file__).resolve().parents[1]
SEARCH = REPO / "results" / "h100" / "tune" / "first-search"


def _script():
    from qwenopt.serving import tune_confirm

    return tune_confirm


def _search(tmp_path: Path, lift_trial: int | None) -> Path:
    """The first H100 search's rows and trials; `lift_trial`'s goodput raised 10% so that it wins."""
    shutil.copy(SEARCH / "tune_int4.csv", tmp_path / "tune_int4.csv")
    records = [json.loads(line) for line in (SEARCH / "tune_int4.trials.jsonl").read_text().splitlines()]
    for record in records:
        if record["trial"] == lift_trial:
            record["goodput_req_s"] *= 1.1
    (tmp_path / "tune_int4.trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path / "tune_int4.csv"


def test_confirm_picks_the_defaults_and_the_winner_at_their_best_levels(tmp_path):
    script = _script()
    default, best = script.pick(_search(tmp_path, lift_trial=2))
    assert (default["trial"], best["trial"]) == (0, 2)
    # each trial's best level: the defaults met the SLO up to 52.152 req/s offered, trial 2 up to 50.047
    assert (script.offered_rate(default), script.offered_rate(best)) == (52.152, 50.047)
    argv = script.load_command(best, [50.047, 52.152], 300, 20, tmp_path, "winner_0", seed=1)
    assert argv[:3] == [sys.executable, "-m", "qwenopt"]
    flags = dict(zip(argv[3:], argv[4:]))  # every flag with the word after it
    assert flags["--launch"] == "vllm-int4" and flags["--quant"] == "awq" and flags["--rate"] == "50.047,52.152"
    assert json.loads(flags["--engine-args"]) == {"enable_prefix_caching": None, "kv_cache_dtype": "fp8",
                                                 "max_num_batched_tokens": 2048}
    assert flags["--slo"] == "e2e=2000ms" and flags["--input-len"] == "512" and flags["--output-len"] == "128"
    assert (flags["--num-requests"], flags["--warmup"], flags["--seed"]) == ("300", "20", "1")


def test_the_default_ladder_runs_from_60_percent_of_the_lower_best_level_to_the_higher():
    # the H200 int4-fast search: the defaults' best level offered 12.418 req/s, the winner's 26.16
    # and one step above the winner's best: where it stops is measured, not only that it held its best
    assert _script().ladder(12.418, 26.16) == [7.451, 12.128, 16.805, 21.483, 26.16, 30.837]
    assert _script().ladder(12.418, 26.16, above=0) == [7.451, 12.128, 16.805, 21.483, 26.16]
    assert _script().ladder(26.16, 12.418, steps=1) == [26.16]


def test_confirm_takes_another_trial_than_the_winner_when_asked(tmp_path):
    script = _script()
    default, chosen = script.pick(_search(tmp_path, lift_trial=2), trial=3)
    assert (default["trial"], chosen["trial"]) == (0, 3) and json.loads(chosen["trial_config"]) == {"max_num_seqs": 64}
    with pytest.raises(QwenoptError, match="trial 7 is not a trial"):
        script.pick(tmp_path / "tune_int4.csv", trial=7)


def test_confirm_has_nothing_to_do_when_the_defaults_won(tmp_path):
    csv = _search(tmp_path, lift_trial=None)  # as measured: trial 0 won
    result = CliRunner().invoke(app, ["confirm", str(csv), str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0 and "defaults won" in result.output and not (tmp_path / "out").exists()


def test_confirm_dry_run_prints_both_starts_on_one_ladder(tmp_path):
    csv = _search(tmp_path, lift_trial=2)
    result = CliRunner().invoke(app, ["confirm", str(csv), "--dry-run", "--rates", "40,45", "--round", "1"])
    assert result.exit_code == 0, result.output
    commands = [line for line in result.output.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and all("--rate 40.000,45.000" in c and "--seed 1" in c for c in commands)
    # an odd round starts the trial first (counterbalanced against an order effect); even rounds the defaults
    assert "serve_trial2_1.log" in commands[0]
    assert str(tmp_path / "tune_int4.confirm" / "serve_defaults_1.log") in commands[1]  # the default folder
    even = CliRunner().invoke(app, ["confirm", str(csv), "--dry-run", "--rates", "40,45", "--round", "2"])
    assert [c.split("--server-log ")[1].split(" ")[0].rsplit("/", 1)[1] for c in even.output.splitlines()
            if c.startswith("$ ")] == ["serve_defaults_2.log", "serve_trial2_2.log"]
    only = CliRunner().invoke(app, ["confirm", str(csv), "--dry-run", "--only", "trial"])
    assert sum(line.startswith("$ ") for line in only.output.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--only", "winner"], "--only takes defaults or trial"), (["--rates", "40,fast"], "--rates must be a positive"),
    (["--rates", "0,40"], "--rates must be a positive"), (["--rates", "sweep"], "--rates must be a positive"),
    (["--rates", ","], "--rates must be positive numbers (1,2,4), got"),
    (["--requests", "0"], "--requests must be >= 1")])
def test_bad_confirm_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(app, ["confirm", str(_search(tmp_path, lift_trial=2)), "--dry-run", *args])
    assert result.exit_code == 2 and message in result.output
    missing = CliRunner().invoke(app, ["confirm", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "no such search result" in missing.output


def test_the_verdict_exits_1_when_the_trial_lost_a_round(tmp_path):
    """The H200 confirm of int4 trial 3 (stream interval 4): it missed 2 s at the ladder's lowest rate."""
    v2 = REPO / "results" / "h200" / "tune" / "v2"
    for name in ("tune_int4.csv", "tune_int4.trials.jsonl"):
        shutil.copy(v2 / name, tmp_path / name)
    shutil.copytree(v2 / "confirm_int4", tmp_path / "confirm_int4")
    result = CliRunner().invoke(app, ["confirm", str(tmp_path / "tune_int4.csv"), str(tmp_path / "confirm_int4"),
                                      "--trial", "3", "--table-only"])
    assert result.exit_code == 1
    assert "trial 3's goodput gain over the defaults is not confirmed in 1 round(s): seed 0: <40 against 43 req/s" \
        in result.output.replace("\n", " ").replace("  ", " ")


def test_confirm_refuses_a_search_without_trials(tmp_path):
    (tmp_path / "t.csv").write_text("")
    with pytest.raises(QwenoptError, match="no trials"):
        _script().pick(tmp_path / "t.csv")


def test_confirm_table_judges_each_level_as_tune_does(tmp_path):
    # the first search's own levels stand in for a confirm run's: the burst (closed loop) missed, the probes met
    shutil.copy(SEARCH / "tune_int4.csv", tmp_path / "confirm.csv")
    lines = _script().table(tmp_path, {DEFAULT_ARGS: "defaults (trial 0)"}).splitlines()
    first = [line for line in lines if line.startswith("| defaults (trial 0) | 0 | f11b2478f342")]
    assert len(first) == 4 and "client-bound" in first[0] and all(line.endswith("| met |") for line in first[1:])
    assert all(line.endswith("| - | met |") for line in first[1:])  # rows from before the tail split: none shown
    import pandas as pd

    rows = pd.read_csv(SEARCH / "tune_int4.csv").assign(tail_ttft_s=0.05, tail_decode_s=1.2, tail_stall_s=0.4,
                                                        compile_cache="loaded")
    rows.to_csv(tmp_path / "confirm.csv", index=False)
    lines = _script().table(tmp_path, {DEFAULT_ARGS: "defaults (trial 0)"}).splitlines()
    assert lines[-1].endswith("| 0.050 / 1.200 / 0.400 | met |") and "slowest 1%" in lines[0]
    # a start that loaded its compiled graphs from vLLM's cache says so beside its run_id
    assert any(line.startswith("| defaults (trial 0) | 0 | f11b2478f342 (graphs loaded) |") for line in lines)


RECHECK = REPO / "results" / "h200" / "tune" / "recheck2"
DEFAULT_ARGS = '{"enable_prefix_caching": null}'
TRIAL5_ARGS = ('{"enable_prefix_caching": null, "linear_backend": "marlin", "max_num_batched_tokens": 2048, '
               '"stream_interval": 4}')
LABELS = {DEFAULT_ARGS: "defaults (trial 0)", TRIAL5_ARGS: "trial 5"}


def _recheck(tmp_path: Path, p99: dict[tuple[str, float], float]) -> Path:  # (engine_args, rate) -> P99 s
    """The H200 recheck's six levels (both configurations met E2E P99 0.8 s at 8 req/s, missed at 12.418 and 26.16),
    with the P99 of some levels replaced."""
    import pandas as pd

    rows = pd.read_csv(RECHECK / "confirm.csv")
    for (args, rate), value in p99.items():
        rows.loc[(rows["engine_args"] == args) & (rows["rate"] == rate), "latency_p99_s"] = value
    rows.to_csv(tmp_path / "confirm.csv", index=False)
    return tmp_path


def test_the_verdict_reads_each_configurations_goodput_off_the_ladder(tmp_path):
    script = _script()
    text = script.verdict(_recheck(tmp_path, {}), LABELS)  # as measured: both met at 8, missed above
    assert "| defaults (trial 0) | 0 | 3 | 8.00 | 6.42 |" in text and "| trial 5 | 0 | 3 | 8.00 | 6.45 |" in text
    assert "trial 5's goodput gain over the defaults is not confirmed in 1 round(s): seed 0: 8 against 8 req/s " \
           "(+0%)" in text
    text = script.verdict(_recheck(tmp_path, {(TRIAL5_ARGS, 12.418): 0.79}), LABELS)
    assert "is confirmed in 1 round(s): seed 0: 12.418 against 8 req/s (+55%)" in text
    # a level that meets above a missed one does not count: the goodput stops at the first miss
    text = script.verdict(_recheck(tmp_path, {(DEFAULT_ARGS, 8.0): 0.9, (DEFAULT_ARGS, 12.418): 0.7}), LABELS)
    assert "| defaults (trial 0) | 0 | 3 | 0.00 | 0.00 |" in text
    assert "is confirmed in 1 round(s): seed 0: 8 against <8 req/s (at this ladder's resolution)" in text
    # the other way round (H200, confirm_int4: trial 3 missed the ladder's lowest rate): below it, not -100%
    text = script.verdict(_recheck(tmp_path, {(TRIAL5_ARGS, 8.0): 0.9, (TRIAL5_ARGS, 12.418): 0.7}), LABELS)
    assert "is not confirmed in 1 round(s): seed 0: <8 against 8 req/s (at this ladder's resolution)" in text


def test_one_folder_holds_several_trials_against_one_defaults_run(tmp_path):
    """A second trial measured into the same folder (here trial 5's rows relabelled as trial 4's, P99 raised) gets
    its own verdict against the same defaults rows; a trial without a defaults round waits for one."""
    import pandas as pd

    script = _script()
    rows = pd.read_csv(RECHECK / "confirm.csv")
    other = rows[rows["engine_args"] == TRIAL5_ARGS].copy()
    other["engine_args"], other["latency_p99_s"] = '{"stream_interval": 4}', 0.7
    later = other.assign(seed=1)  # a round the defaults have not run yet
    pd.concat([rows, other, later]).to_csv(tmp_path / "confirm.csv", index=False)
    labels = {**LABELS, '{"stream_interval": 4}': "trial 4"}
    text = script.verdict(tmp_path, labels)
    assert "trial 5's goodput gain over the defaults is not confirmed in 1 round(s)" in text
    # trial 4 met every rung, the top (26.16) included: its limit lies above the ladder, the gain is a floor
    assert "trial 4's goodput gain over the defaults is confirmed in 1 round(s): seed 0: 26.16+ against 8 req/s " \
           "(at least +227%)" in text


def test_the_committed_fp16_confirm_reads_as_a_floor_where_the_winner_met_the_top_rung():
    """results/h200/tune/v2/confirm_fp16 (H200): the defaults met up to 41 and missed 44 in both rounds; trial 5 met
    every rung, 44 the top. Its gain is at least one step, and the verdict says so."""
    from pathlib import Path

    v2 = Path(__file__).resolve().parent.parent / "results/h200/tune/v2"
    script = _script()
    text = script.verdict(v2 / "confirm_fp16", script.labels_of(v2 / "tune_fp16.csv"))
    assert "trial 5's goodput gain over the defaults is confirmed in 2 round(s): seed 0: 44+ against 41 req/s " \
           "(at least +7%); seed 1: 44+ against 41 req/s (at least +7%)" in text


def test_the_labels_name_every_trial_of_the_search(tmp_path):
    labels = _script().labels_of(_search(tmp_path, lift_trial=None))
    assert labels['{"enable_prefix_caching": null}'] == "defaults (trial 0)"
    assert sorted(labels.values()) == ["defaults (trial 0)", "trial 1", "trial 2", "trial 3", "trial 4"]


def test_the_verdict_waits_for_a_round_with_both_configurations(tmp_path):
    import pandas as pd

    rows = pd.read_csv(RECHECK / "confirm.csv")
    rows[rows["engine_args"] == TRIAL5_ARGS].to_csv(tmp_path / "confirm.csv", index=False)
    assert "trial 5: no round holds it and the defaults yet" in _script().verdict(tmp_path, LABELS)
    rows[rows["engine_args"] == DEFAULT_ARGS].to_csv(tmp_path / "confirm.csv", index=False)
    assert "no trial measured yet besides the defaults" in _script().verdict(tmp_path, LABELS)


def test_ctrl_c_lets_the_load_process_stop_its_own_server(tmp_path):
    """A Ctrl-C that reached only this script: the child gets SIGINT after the grace (not SIGKILL, which would leave
    its server running) and the interrupt goes on."""
    import os
    import signal
    import threading
    import time

    child = tmp_path / "child.py"
    child.write_text(f"""import signal, sys, time, pathlib
def stop(*_):
    pathlib.Path({str(tmp_path / 'stopped')!r}).write_text('server stopped')
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
pathlib.Path({str(tmp_path / 'ready')!r}).write_text('')
time.sleep(60)
""")

    def interrupt_when_ready():
        while not (tmp_path / "ready").exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    # a shell's background job (`cmd &`) starts with SIGINT ignored; Ctrl-C's own handler makes the test independent
    # of how pytest was started
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_when_ready, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _script().run_child([sys.executable, str(child)], grace_s=0.2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "stopped").read_text() == "server stopped"


def test_tune_prints_the_confirm_command_when_a_trial_beat_the_defaults(tmp_path):
    """Under the outcome (and in OUT.outcome.txt), only when a trial other than the defaults won."""
    from qwenopt.cli.tune import show_outcome
    from qwenopt.serving.tune_trial import TrialResult

    default = TrialResult(0, "default", {}, "ok", goodput_req_s=40.6, rate_req_s=45.1, latency_p99_s=1.97)
    better = TrialResult(1, "given", {"stream_interval": 4}, "ok", goodput_req_s=44.0, rate_req_s=48.0,
                         latency_p99_s=1.9)
    out = tmp_path / "tune_int4.csv"
    show_outcome([default, better], "goodput", 48, 0, out)
    assert f"confirm the gain (fresh starts, the same arrivals for both):\n  qwenopt confirm {out}\n" in \
        out.with_suffix(".outcome.txt").read_text()
    show_outcome([default], "goodput", 48, 0, out)
    assert "qwenopt confirm" not in out.with_suffix(".outcome.txt").read_text()


def test_an_a_a_run_measures_the_defaults_on_two_starts_and_reports_their_spread(tmp_path):
    """--trial 0: the defaults twice, each on its own start, the same arrivals; the second start's rows (a second
    run_id in one round) read as "defaults, start 2", and the verdict gives the spread, not a confirmation."""
    import pandas as pd

    v2 = REPO / "results" / "h200" / "tune" / "v2"
    for name in ("tune_int4.csv", "tune_int4.trials.jsonl"):
        shutil.copy(v2 / name, tmp_path / name)
    dry = CliRunner().invoke(app, ["confirm", str(tmp_path / "tune_int4.csv"), str(tmp_path / "aa"), "--trial", "0",
                                   "--rates", "40,43,46", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "vLLM's defaults on 2 start(s) (A/A)" in dry.output
    commands = [line for line in dry.output.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "serve_defaults_0.log" in commands[0] and "serve_defaults-again_0.log" in commands[1]
    assert len({c.split("--engine-args ")[1].split(" ")[0] for c in commands}) == 1  # the same configuration
    # the H200 confirm's defaults rows (met 40 and 43, missed 46 up), then a second start that missed 43
    rows = pd.read_csv(v2 / "confirm_int4" / "confirm.csv")
    first = rows[rows["engine_args"] == rows["engine_args"].iloc[0]]
    second = first.assign(run_id="second-start")
    second.loc[second["rate"] == 43, "latency_p99_s"] = 2.1
    (tmp_path / "aa").mkdir()
    pd.concat([first, second]).to_csv(tmp_path / "aa" / "confirm.csv", index=False)
    result = CliRunner().invoke(app, ["confirm", str(tmp_path / "tune_int4.csv"), str(tmp_path / "aa"), "--trial", "0",
                                      "--table-only"])
    assert result.exit_code == 0, result.output
    assert "| defaults, start 2 | 0 | 5 | 40.00 |" in result.output
    assert "A/A: defaults, start 2 of vLLM's defaults against the first, the same arrivals: seed 0: 40 against 43 " \
           "req/s (-7%)" in result.output
    assert "not confirmed" not in result.output


def test_the_p99_gap_pairs_rungs_by_round_and_rate_and_skips_a_rung_one_side_lacks():
    import pandas as pd

    rows = pd.DataFrame({"configuration": ["defaults (trial 0)"] * 3 + ["trial 5"] * 3,
                         "seed": [0, 0, 1, 0, 0, 1], "rate": [32.0, 35.0, 32.0, 32.0, 38.0, 32.0],
                         "latency_p99_s": [1.8, 1.9, 2.0, 1.5, 1.7, 2.25]})
    gaps = _script().p99_gaps(rows, "trial 5")
    assert gaps.round(3).to_dict() == {(0, 32.0): -0.3, (1, 32.0): 0.25}  # 35 and 38: one side each, no pair
    assert _script().gap_text(gaps, "trial 5", "the defaults") == (
        "P99 E2E at the same rung and round, trial 5 minus the defaults: median -0.025 s over 2 rung(s), lower at 1, "
        "from -0.300 to +0.250 s")
    assert "no rung measured by both" in _script().gap_text(gaps.iloc[:0], "trial 5", "the defaults")


def test_the_committed_fp16_confirm_and_a_a_give_their_p99_gaps_side_by_side():
    """results/h200/tune/v2 (H200): trial 5 minus the defaults over 2 rounds x 5 rungs (confirm_fp16/summary.md's
    P99 column: -0.419, -0.108, +0.262, -0.353, -0.092; +0.015, +0.128, -0.394, -0.059, -0.408 s), and, a session
    later on another machine, the defaults' second start minus their first (aa_fp16: +0.190, +0.025, +0.072,
    +0.300, +0.062 s): a gap of the winner's size is one a server start alone made."""
    v2 = REPO / "results" / "h200" / "tune" / "v2"
    script = _script()
    labels = script.labels_of(v2 / "tune_fp16.csv")
    assert ("trial 5 minus the defaults: median -0.100 s over 10 rung(s), lower at 7, from -0.419 to +0.262 s"
            in script.verdict(v2 / "confirm_fp16", labels))
    text = script.verdict(v2 / "aa_fp16", labels)
    assert "seed 0: <32 against 32 req/s" in text
    assert ("defaults, start 2 minus the defaults' first start: median +0.072 s over 5 rung(s), lower at 0, from "
            "+0.025 to +0.300 s") in text


def test_a_round_whose_two_starts_ran_on_different_cards_is_left_out(tmp_path):
    """Rows name their card (gpu_uuid): a round measured across two cards (say `--only defaults` and `--only trial`
    in calls that got different machines) pairs nothing, since two cards of one kind can differ by more than a
    configuration (results/h200/tune/v2/aa_fp16); rows from before the column pair as before."""
    import pandas as pd

    folder = _recheck(tmp_path, {(TRIAL5_ARGS, 12.418): 0.79})
    rows = pd.read_csv(folder / "confirm.csv")
    rows.assign(gpu_uuid=["GPU-a" if args == DEFAULT_ARGS else "GPU-b" for args in rows["engine_args"]]).to_csv(
        folder / "confirm.csv", index=False)
    text = _script().verdict(folder, LABELS)
    assert "trial 5: round(s) 0 left out: it and the defaults ran on different cards (gpu_uuid)" in text
    assert "verdict: trial 5: no round holds it and the defaults on one card yet" in text and "confirmed" not in text
    rows.assign(gpu_uuid="GPU-a").to_csv(folder / "confirm.csv", index=False)
    text = _script().verdict(folder, LABELS)
    assert "left out" not in text and "is confirmed in 1 round(s): seed 0: 12.418 against 8 req/s (+55%)" in text


def test_the_outcome_says_when_the_winner_and_the_defaults_ran_on_different_cards(tmp_path):
    """A search resumed in another device call may land on another machine: the rows' gpu_uuid tells, and the
    outcome says the gain then includes the cards' difference. One card, or rows without the column: no line."""
    import pandas as pd

    from qwenopt.cli.tune import show_outcome
    from qwenopt.serving.tune_trial import TrialResult
    from qwenopt.serving.tune_view import card_note

    rows = pd.DataFrame({"trial": [0, 0, 1, 2], "gpu_uuid": ["GPU-a", "GPU-a", "GPU-a", "GPU-b"]})
    assert card_note(rows, 1) is None and card_note(rows.drop(columns="gpu_uuid"), 2) is None
    assert card_note(rows, 2) == ("  trial 2 and the defaults ran on different cards (2 in this search, gpu_uuid): "
                                  "the gain includes the cards' difference; qwenopt confirm measures both on one")
    assert card_note(rows.assign(gpu_uuid=None), 2) is None  # rows from before the column
    out = tmp_path / "tune_int4.csv"
    rows.to_csv(out, index=False)
    default = TrialResult(0, "default", {}, "ok", goodput_req_s=40.6, rate_req_s=45.1, latency_p99_s=1.97)
    better = TrialResult(2, "tpe", {"stream_interval": 4}, "ok", goodput_req_s=44.0, rate_req_s=48.0,
                         latency_p99_s=1.9)
    show_outcome([default, better], "goodput", 48, 0, out)
    text = out.with_suffix(".outcome.txt").read_text()
    assert "trial 2 and the defaults ran on different cards" in text and "qwenopt confirm" in text
