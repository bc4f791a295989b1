import json
import os

import pytest

from qwenopt.errors import QwenoptError
from qwenopt.results import COLUMNS, SCHEMA_VERSION, ResultWriter, read_results, read_samples


def row(**values):
    return {"schema_version": SCHEMA_VERSION, "run_id": "r1", "regime": "hf-fp16", "batch_size": 1, "input_len": 8,
            "output_len": 2, "status": "ok", **values}


def test_writer_appends_rows_and_samples_atomically(tmp_path):
    old_mask = os.umask(0o022)
    try:
        _append_rows(tmp_path)
    finally:
        os.umask(old_mask)


def _append_rows(tmp_path):
    path = tmp_path / "out.csv"
    writer = ResultWriter(path)
    writer.append(row(output_tok_s=12.5), [{"e2e_s": 1.0, "ttft_s": 0.1, "output_tokens": 2}])
    writer.append(row(batch_size=2, status="oom", error="CUDA out of memory"), [])
    frame = read_results(path)
    assert list(frame.columns) == COLUMNS
    assert list(frame["status"]) == ["ok", "oom"]
    assert frame.loc[0, "output_tok_s"] == 12.5
    side = read_samples(path)
    assert [len(c["samples"]) for c in side] == [1, 0]
    # A new writer on the same file continues it.
    ResultWriter(path).append(row(batch_size=4), [])
    assert list(read_results(path)["batch_size"]) == [1, 2, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.samples.jsonl"]
    assert path.stat().st_mode & 0o777 == 0o644  # as any file the user writes under umask 022, not mkstemp's 0600


def test_writer_refuses_columns_outside_the_schema(tmp_path):
    with pytest.raises(ValueError, match="outside the schema"):
        ResultWriter(tmp_path / "x.csv").append(row(made_up=1), [])
    assert not (tmp_path / "x.csv").exists()


def test_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "out.csv"
    writer = ResultWriter(path)
    writer.append(row(), [])
    before = path.read_text()

    def broken_write(fd, data):
        raise OSError("disk full")

    monkeypatch.setattr("qwenopt.results.os.write", broken_write)
    with pytest.raises(OSError):
        writer.append(row(batch_size=2), [])
    assert path.read_text() == before


def _append_many(path, writer_id, count):
    writer = ResultWriter(path)
    for i in range(count):
        writer.append(row(run_id=f"w{writer_id}", batch_size=i + 1), [{"e2e_s": 1.0, "ttft_s": 0.1, "output_tokens": 2}])


def test_concurrent_writers_lose_no_row(tmp_path):
    import multiprocessing

    path = tmp_path / "shared.csv"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, w, 50)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    frame = read_results(path)
    assert len(frame) == 200
    assert sorted(frame.groupby("run_id").size().tolist()) == [50, 50, 50, 50]
    assert sorted(frame[frame["run_id"] == "w2"]["batch_size"]) == list(range(1, 51))
    assert len(read_samples(path)) == 200
    assert path.read_text().count("schema_version") == 1  # one header


def _append_forever(path):
    writer = ResultWriter(path)
    i = 0
    while True:
        i += 1
        writer.append(row(batch_size=i, error="x" * 2000), [{"e2e_s": 1.0, "ttft_s": 0.1, "output_tokens": 2}] * 50)


def test_a_writer_killed_mid_append_leaves_readable_files(tmp_path):
    import multiprocessing
    import signal
    import time

    path = tmp_path / "killed.csv"
    child = multiprocessing.get_context("fork").Process(target=_append_forever, args=(path,))
    child.start()
    deadline = time.monotonic() + 60
    while (not path.exists() or path.read_text().count("\n") < 30) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    frame = read_results(path)
    assert len(frame) >= 29 and list(frame["batch_size"]) == list(range(1, len(frame) + 1))
    assert len(read_samples(path)) >= len(frame) - 1
    ResultWriter(path).append(row(batch_size=0), [])  # and the file goes on
    assert read_results(path)["batch_size"].tolist()[-1] == 0


def test_a_torn_last_line_is_dropped_on_read_and_trimmed_on_append(tmp_path, capsys):
    path = tmp_path / "torn.csv"
    ResultWriter(path).append(row(), [])
    with open(path, "a") as handle:
        handle.write("1,r1,2026-11-25,hf-fp")  # what a writer killed mid-row would leave
    assert len(read_results(path)) == 1
    assert "torn last line" in capsys.readouterr().err
    ResultWriter(path).append(row(batch_size=2), [])
    assert read_results(path)["batch_size"].tolist() == [1, 2]
    assert "hf-fp\n" not in path.read_text()


def test_a_torn_samples_line_costs_no_other_record(tmp_path):
    from qwenopt.results import append_samples, sidecar_path

    path = tmp_path / "s.csv"
    append_samples(path, {"n": 1})
    with open(sidecar_path(path), "a") as handle:
        handle.write('{"n": 2, "samp')  # a writer killed mid-line
    append_samples(path, {"n": 3})
    assert [r["n"] for r in read_samples(path)] == [1, 3]


def test_a_compressed_finished_sidecar_reads_the_same(tmp_path):
    import gzip

    from qwenopt.results import append_samples, sidecar_path

    path = tmp_path / "s.csv"
    for n in (1, 2):
        append_samples(path, {"n": n})
    sidecar = sidecar_path(path)
    sidecar.with_name(sidecar.name + ".gz").write_bytes(gzip.compress(sidecar.read_bytes()))
    sidecar.unlink()
    assert [r["n"] for r in read_samples(path)] == [1, 2]
    append_samples(path, {"n": 3})  # a later run appends: the compressed records come back with it
    assert [r["n"] for r in read_samples(path)] == [1, 2, 3]
    assert sidecar.is_file() and not sidecar.with_name(sidecar.name + ".gz").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("a,b\n1,2\n", "not a qwenopt result file: missing columns schema_version"),
        ("", "is not a readable CSV"),
        ('a,b\n1,"2\n', "is not a readable CSV"),
    ],
)
def test_malformed_result_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(QwenoptError, match=message):
        read_results(path)
    if content:
        with pytest.raises(QwenoptError):
            ResultWriter(path)  # and never appended to
    else:
        ResultWriter(path).append(row(), [])  # an empty file (`touch out.csv`) is a new one
        assert len(read_results(path)) == 1


def test_other_schema_versions_are_refused(tmp_path):
    path = tmp_path / "old.csv"
    writer = ResultWriter(path)
    writer.append(row(schema_version=SCHEMA_VERSION + 1), [])
    with pytest.raises(QwenoptError, match="schema version"):
        read_results(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(QwenoptError, match="no such result file"):
        read_results(tmp_path / "nope.csv")


def test_append_csv_appends_and_refuses_a_file_with_other_columns(tmp_path):
    from qwenopt.results import append_csv

    path = tmp_path / "q.csv"
    append_csv(path, {"a": 1, "b": 2.5}, ["a", "b"])
    append_csv(path, {"a": 3}, ["a", "b"])
    assert path.read_text().splitlines() == ["a,b", "1,2.5", "3,"]
    with pytest.raises(QwenoptError, match="other columns"):
        append_csv(path, {"x": 1}, ["x"])


def test_files_from_before_the_gptqmodel_column_still_read_and_continue(tmp_path):
    import pandas as pd

    path = tmp_path / "old.csv"
    older = [c for c in COLUMNS if c != "gptqmodel"]
    pd.DataFrame([{c: row().get(c) for c in older}], columns=older).to_csv(path, index=False)
    frame = read_results(path)
    assert list(frame.columns) == COLUMNS and frame["gptqmodel"].isna().all()
    ResultWriter(path).append(row(batch_size=2, gptqmodel="7.5.0"), [])
    again = read_results(path)
    assert list(again.columns) == COLUMNS
    assert again["gptqmodel"].tolist()[1] == "7.5.0" and pd.isna(again["gptqmodel"].tolist()[0])


def test_append_csv_continues_a_file_from_before_the_gptqmodel_column(tmp_path):
    from qwenopt.results import append_csv

    path = tmp_path / "load.csv"
    append_csv(path, {"a": 1, "vllm": "0.26.0"}, ["a", "vllm"])
    append_csv(path, {"a": 2, "vllm": "0.26.0", "gptqmodel": "7.5.0"}, ["a", "vllm", "gptqmodel"])
    assert path.read_text().splitlines() == ["a,vllm,gptqmodel", "1,0.26.0,", "2,0.26.0,7.5.0"]


def test_rewriting_an_older_file_keeps_its_text_exactly(tmp_path):
    from qwenopt.results import append_csv

    path = tmp_path / "load.csv"
    path.write_text('a,vllm\n1,0.30\n2,"x, y"\n')
    append_csv(path, {"a": 3, "vllm": "0.30", "gptqmodel": "7.5"}, ["a", "vllm", "gptqmodel"])
    assert path.read_text().splitlines() == ["a,vllm,gptqmodel", "1,0.30,", '2,"x, y",', "3,0.30,7.5"]


def test_a_bench_file_from_before_the_timings_and_gptqmodel_columns_is_continued(tmp_path):
    import pandas as pd

    path = tmp_path / "older.csv"
    older = [c for c in COLUMNS if c not in ("gptqmodel", "timings")]
    pd.DataFrame([{c: row(samples=10).get(c) for c in older}], columns=older).to_csv(path, index=False)
    ResultWriter(path).append(row(batch_size=2, samples=10, timings=5, gptqmodel="7.5.0"), [])
    assert path.read_text().splitlines()[0].split(",") == COLUMNS  # given the new columns once
    frame = read_results(path)
    assert frame["batch_size"].tolist() == [1, 2] and frame["samples"].tolist() == [10, 10]
    assert pd.isna(frame["timings"][0]) and frame["timings"][1] == 5


def test_load_files_drop_a_torn_last_line_like_bench_files(tmp_path):
    """matrix, report and compare read load rows through read_load: a killed writer's half row is no row."""
    from qwenopt.results import append_csv, read_load
    from qwenopt.schema import LOAD_COLUMNS, LOAD_SCHEMA_VERSION

    path = tmp_path / "load.csv"
    append_csv(path, {"schema_version": LOAD_SCHEMA_VERSION, "level": 1, "class": "all", "req_s": 2.0}, LOAD_COLUMNS)
    with open(path, "a") as handle:
        handle.write(f"{LOAD_SCHEMA_VERSION},run,2026")  # torn: no newline, most columns missing
    frame = read_load(path)
    assert list(frame.columns) == LOAD_COLUMNS and list(frame["req_s"]) == [2.0]
    append_csv(path, {"schema_version": 1, "level": 2, "class": "all"}, LOAD_COLUMNS)
    with pytest.raises(QwenoptError, match="load schema version"):
        read_load(path)


def test_a_load_file_from_before_the_gateway_column_is_read_and_extended(tmp_path):
    from qwenopt.compare import read_any
    from qwenopt.results import append_csv, read_load
    from qwenopt.schema import LOAD_COLUMNS

    old_columns = [c for c in LOAD_COLUMNS if c != "gateway"]
    path = tmp_path / "old.csv"
    row = {"schema_version": 2, "run_id": "r", "level": "rate=1", "class": "all", "status": "ok", "req_s": 1.5}
    append_csv(path, row, old_columns)
    assert read_any(path)[0] == "load" and read_load(path)["gateway"].isna().all()
    append_csv(path, {**row, "gateway": "no admission control"}, LOAD_COLUMNS)
    frame = read_load(path)
    assert list(frame["req_s"]) == [1.5, 1.5] and frame["gateway"].iloc[1] == "no admission control"


@pytest.mark.parametrize("run_id", ["123456e78901", "012345678901", "5e5"])
def test_a_run_id_that_looks_like_a_number_still_finds_its_rows(tmp_path, run_id):
    """uuid4().hex[:12] is all digits, or digits with one inner 'e', about once in 140 runs: read as a number, no row
    matched its run, and an isolated bench run recorded its own finished cells as failed (seen in CI)."""
    from qwenopt.results import append_csv, read_load, read_rows
    from qwenopt.schema import LOAD_SCHEMA_VERSION, TUNE_LOAD_COLUMNS

    ResultWriter(tmp_path / "b.csv").append(row(run_id=run_id, git_sha="1234567"), [])
    assert [r["run_id"] for r in read_rows(tmp_path / "b.csv", run_id)] == [run_id]
    assert read_results(tmp_path / "b.csv").loc[0, "git_sha"] == "1234567"
    append_csv(tmp_path / "l.csv", {"schema_version": LOAD_SCHEMA_VERSION, "run_id": run_id, "study": "1e10"},
               TUNE_LOAD_COLUMNS)
    load = read_load(tmp_path / "l.csv")
    assert (load.loc[0, "run_id"], load.loc[0, "study"]) == (run_id, "1e10")
