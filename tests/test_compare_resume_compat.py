"""A comparison's results file outlives the code that started it: the pretrained lab runs for days,
and later sessions resume its results.jsonl with newer colm. A resume is refused when the
comparison's settings or identity (data digests, tokenizer digest, training options) differ from
the recorded ones, so a refactor that changed how any of them is computed (an option's type, a
digest, which rows a cap keeps) would refuse the lab's file, or worse, accept it under a value
that now means something else.

tests/data/compare_resume_be0339f.jsonl is the header and the two seed-0 runs that main at
be0339f (issue 28, the first colm with the identity header) wrote for the command below, with
tests/data/lab_be0339f.yaml (the lab's config at be0339f). Recorded with:

    git worktree add /tmp/old be0339f
    PYTHONPATH=/tmp/old/src python -m colm.cli compare <ARGV below, seeds 0,1> --output-dir out
    head -3 out/results.jsonl > tests/data/compare_resume_be0339f.jsonl   # header + seed 0's runs

The test resumes it with today's code, stopping before anything trains.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py

DATA = Path(__file__).parent / "data"
RECORDED = DATA / "compare_resume_be0339f.jsonl"
ARGV = ["--config", str(DATA / "lab_be0339f.yaml"), "--model-size", "tiny", "--max-length", "48",
        "--per-device-train-batch-size", "4", "--arms", "plain,stratified", "--seeds", "0,1",
        "--max-steps", "1", "--max-examples-per-source", "4", "--max-eval-examples-per-source", "2"]


class ResultsOpened(BaseException):
    """Raised in place of training, once the results file was resumed (not an Exception, so
    nothing on the way up mistakes it for a failure)."""


def test_a_comparison_recorded_by_be0339f_resumes_with_the_same_settings_and_identity(tmp_path, monkeypatch):
    import colm.compare.run as compare_run
    from colm.cli import compare
    from colm.compare.results import flatten

    out = tmp_path / "lab"
    out.mkdir()
    (out / "results.jsonl").write_bytes(RECORDED.read_bytes())
    opened = {}

    def stop(*args, results, **kwargs):
        opened["results"] = results
        raise ResultsOpened

    monkeypatch.setattr(compare_run, "run_compare", stop)
    with pytest.raises(ResultsOpened):
        compare.run([*ARGV, "--output-dir", str(out)])  # a refusal would raise UsageError instead
    results = opened["results"]
    assert [(r["arm"], r["seed"]) for r in results.runs] == [("plain", 0), ("stratified", 0)]
    assert results.changes == [] and results.notes == []
    # Nothing appended (a changed identity would add a record): the file is as be0339f left it.
    assert (out / "results.jsonl").read_bytes() == RECORDED.read_bytes()
    # Every recorded field has today's value (fields added since may be new; none may differ).
    header = json.loads(RECORDED.read_text().splitlines()[0])
    for recorded, today in ((header["settings"], results.settings), (header["identity"], results.identity)):
        old, new = flatten(recorded), flatten(today)
        assert {k: (v, new.get(k, "(missing)")) for k, v in old.items() if new.get(k, "(missing)") != v} == {}
