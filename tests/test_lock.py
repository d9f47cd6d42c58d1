"""The output-folder lock (colm.cli.lock): exclusive, released on exit, tidy after a failure."""
from __future__ import annotations

import os

import pytest

from colm.cli.errors import UsageError
from colm.cli.lock import LOCK_FILE, OutputDirLock


def test_a_second_holder_in_the_same_process_is_refused_until_release(tmp_path):
    first = OutputDirLock(tmp_path / "run", command="colm train A").acquire()
    with pytest.raises(UsageError, match=rf"--output-dir .*run: another colm run is using it \(pid {os.getpid()} .*colm train A\)"):
        OutputDirLock(tmp_path / "run", command="colm train B").acquire()
    first.release()
    with OutputDirLock(tmp_path / "run") as second:
        assert second.taken_over is None  # released properly: nothing stale to report


def test_folders_the_lock_created_go_away_only_while_empty(tmp_path):
    with OutputDirLock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / LOCK_FILE).is_file()
    assert not (tmp_path / "a").exists()  # a failed command leaves nothing behind
    with OutputDirLock(tmp_path / "a" / "b"):
        (tmp_path / "a" / "b" / "report.json").write_text("{}")
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["report.json"]


def test_a_file_where_the_folder_should_be_names_the_option(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match=r"--out .*f/run: .*f is a file, not a folder"):
        OutputDirLock(tmp_path / "f" / "run", option="--out").acquire()
