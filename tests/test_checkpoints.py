"""Which checkpoint a resume starts from, and when a run is finished (colm.integrations.checkpoints)."""
from __future__ import annotations

import json

import pytest

from colm.integrations.checkpoints import (
    CheckpointError,
    is_finished,
    latest_complete_checkpoint,
    read_trainer_state,
    resume_checkpoint,
)


def checkpoint(root, step, state="ok"):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state == "ok":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    elif state == "torn":
        (folder / "trainer_state.json").write_text('{"global_st')
    return folder


def test_latest_complete_checkpoint_passes_over_newer_incomplete_ones(tmp_path):
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 10)  # numerically newest wins over name order ("10" < "4" as text)
    checkpoint(tmp_path, 12, "torn")
    checkpoint(tmp_path, 14, "missing")
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name: ignored
    point = latest_complete_checkpoint(tmp_path)
    assert point.step == 10 and point.path == str(tmp_path / "checkpoint-10")
    assert [folder for folder, _ in point.skipped] == [str(tmp_path / "checkpoint-14"), str(tmp_path / "checkpoint-12")]
    assert "no trainer_state.json" in point.skipped[0][1] and "not valid JSON" in point.skipped[1][1]
    assert resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resume_checkpoint(None, str(tmp_path)) is None and resume_checkpoint(False, str(tmp_path)) is None


def test_no_complete_checkpoint_and_bad_states_are_named(tmp_path):
    assert latest_complete_checkpoint(tmp_path) is None
    torn = checkpoint(tmp_path, 3, "torn")
    with pytest.raises(CheckpointError, match="no complete checkpoint.*checkpoint-3.*not valid JSON"):
        resume_checkpoint(True, str(tmp_path))
    with pytest.raises(CheckpointError, match=f"{torn / 'trainer_state.json'}: not valid JSON"):
        read_trainer_state(torn)
    (torn / "trainer_state.json").write_text(json.dumps({"global_step": "3"}))
    with pytest.raises(CheckpointError, match="no integer 'global_step'"):
        read_trainer_state(torn)


@pytest.mark.parametrize(
    "state, max_steps, epochs, finished",
    [
        ({"global_step": 5}, 5, 3.0, True),
        ({"global_step": 5}, 6, 3.0, False),  # --max-steps raised: more to train
        ({"global_step": 8, "max_steps": 8, "num_train_epochs": 2}, -1, 2.0, True),
        ({"global_step": 8, "max_steps": 8, "num_train_epochs": 2}, -1, 3.0, False),  # more epochs
        ({"global_step": 4, "max_steps": 8, "num_train_epochs": 2}, -1, 2.0, False),
    ],
)
def test_is_finished(state, max_steps, epochs, finished):
    assert is_finished(state, max_steps, epochs) is finished
