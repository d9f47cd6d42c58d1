"""`--data` takes what `datasets.load_dataset` takes: every layout loads the same rows, and the
validation split is found by one rule; source-field mistakes are said at load, not after training."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
from pathlib import Path

import datasets
import pytest

from colm.data import DataError, load_mixture, source_sizes
from colm.data.loading import LoadReport, hub_split_names
from colm.data.validation_data import choose_validation, match_sources
from colm.evaluation import with_natural

datasets.disable_progress_bars()

TRAIN = ([{"prompt": f"What is {i} plus 1?", "response": f"The answer is {i + 1}", "source": "add"} for i in range(5)]
         + [{"prompt": f"Double {i}.", "response": f"The answer is {2 * i}", "source": "dbl"} for i in range(3)])
VALID = [{"prompt": "What is 9 plus 1?", "response": "The answer is 10", "source": "add"},
         {"prompt": "Double 9.", "response": "The answer is 18", "source": "dbl"}]
TRAIN_SIZES, VALID_SIZES = {"add": 5, "dbl": 3}, {"add": 1, "dbl": 1}


def write(path: Path, rows: list[dict]) -> Path:
    """`rows` in the format the file name says (JSON Lines, JSON array, Parquet, CSV, compressed)."""
    name = path.name
    if name.endswith(".parquet"):
        datasets.Dataset.from_list(rows).to_parquet(str(path))
        return path
    if ".csv" in name:
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False)  # pandas infers the compression from the name
        return path
    if ".jsonl" in name:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = json.dumps(rows, indent=1)  # a JSON array, pretty-printed
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix)
    if opener is not None:
        with opener(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


SINGLE_FILES = ["data.jsonl", "data.jsonl.gz", "data.jsonl.bz2", "data.jsonl.xz", "data.json", "data.json.gz",
                "data.parquet", "data.csv", "data.csv.gz"]


@pytest.mark.parametrize("name", SINGLE_FILES)
def test_a_single_file_of_every_kind_loads_the_same_rows(tmp_path: Path, name: str):
    ds = load_mixture(write(tmp_path / name, TRAIN))
    assert source_sizes(ds) == TRAIN_SIZES
    assert list(ds["prompt"]) == [r["prompt"] for r in TRAIN]
    assert list(ds["response"]) == [r["response"] for r in TRAIN]  # CSV cells stay text


FOLDERS = {
    "split files, JSON Lines": ("train.jsonl", "validation.jsonl"),
    "split files, JSON arrays": ("train.json", "validation.json"),
    "split files, Parquet shards": ("train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"),
    "split files, CSV": ("train.csv", "val.csv"),  # `val` is a name of the validation split
    "split files, gzip JSON Lines": ("train.jsonl.gz", "dev.jsonl.gz"),
}


@pytest.mark.parametrize("layout", sorted(FOLDERS))
def test_a_folder_of_split_files_trains_on_train_and_validates_on_validation(tmp_path: Path, layout: str):
    train_name, valid_name = FOLDERS[layout]
    folder = tmp_path / "my_data"
    folder.mkdir()
    write(folder / train_name, TRAIN)
    write(folder / valid_name, VALID)
    assert source_sizes(load_mixture(folder, split="train")) == TRAIN_SIZES
    choice = choose_validation(str(folder), None)
    assert choice.spec == str(folder) and "own validation split" in choice.line()
    assert source_sizes(load_mixture(choice.spec, split=choice.split)) == VALID_SIZES


def test_a_folder_of_source_split_files(tmp_path: Path):
    for source in ("add", "dbl"):
        rows = [{k: v for k, v in r.items() if k != "source"} for r in TRAIN if r["source"] == source]
        write(tmp_path / f"{source}.train.jsonl", rows)
        write(tmp_path / f"{source}.validation.parquet", [r for r in VALID if r["source"] == source])
    assert source_sizes(load_mixture(tmp_path, split="train")) == TRAIN_SIZES
    choice = choose_validation(str(tmp_path), None)
    assert source_sizes(load_mixture(choice.spec, split=choice.split)) == VALID_SIZES


def test_a_save_to_disk_folder_with_its_validation_split(tmp_path: Path):
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN),
                          "validation": datasets.Dataset.from_list(VALID)}).save_to_disk(str(folder))
    assert source_sizes(load_mixture(folder, split="train")) == TRAIN_SIZES
    choice = choose_validation(str(folder), None)
    assert (choice.spec, choice.split) == (str(folder), "validation")  # it was ignored before
    assert source_sizes(load_mixture(choice.spec, split=choice.split)) == VALID_SIZES


def test_validation_precedence_eval_data_then_own_split_then_none(tmp_path: Path):
    folder = tmp_path / "d"
    folder.mkdir()
    write(folder / "train.jsonl", TRAIN)
    assert choose_validation(str(folder), None).spec is None
    assert "validating on nothing" in choose_validation(str(folder), None).line()
    write(folder / "validation.jsonl", VALID)
    other = write(tmp_path / "held_out.jsonl", VALID)
    choice = choose_validation(str(folder), str(other))
    assert (choice.spec, choice.split) == (str(other), None)
    assert "--eval-data" in choice.line() and "wins over" in choice.line()


def test_the_split_a_run_trains_on_is_not_its_validation(tmp_path: Path):
    folder = tmp_path / "d"
    folder.mkdir()
    write(folder / "train.jsonl", TRAIN)
    write(folder / "validation.jsonl", VALID)
    choice = choose_validation(str(folder), None, train_split="validation")
    assert choice.spec is None and "is the split the run trains on" in choice.line()
    assert choose_validation(str(folder), None, train_split="train").split == "validation"


def test_one_file_kind_per_split_is_enforced(tmp_path: Path):
    write(tmp_path / "train.jsonl", TRAIN)
    write(tmp_path / "train-extra.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": "yo"}]}])
    with pytest.raises(DataError, match=r"train.jsonl: prompt/response rows, but the files before it hold chat"):
        load_mixture(tmp_path, split="train")


def test_a_bad_parquet_or_csv_row_is_named_by_file_and_row(tmp_path: Path):
    path = write(tmp_path / "data.parquet", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": None}])
    with pytest.raises(DataError, match=r"data.parquet, row 2: column 'response' must hold strings"):
        load_mixture(path)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken.parquet: could not read it as Parquet"):
        load_mixture(broken)


def test_json_lines_keep_line_numbered_errors(tmp_path: Path):
    path = tmp_path / "data.jsonl.bz2"
    with bz2.open(path, "wt") as handle:
        handle.write(json.dumps(TRAIN[0]) + "\n{broken\n")
    with pytest.raises(DataError, match=r"data.jsonl.bz2:2: malformed JSON"):
        load_mixture(path)


# ---------------------------------------------------------------- the source field


def without_source(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "source"} for r in rows]


def test_rows_without_source_are_one_source_named_by_the_folder_on_both_splits(tmp_path: Path):
    folder = tmp_path / "my_data"
    folder.mkdir()
    write(folder / "train.jsonl", [dict(r, category="maths") for r in without_source(TRAIN)])
    write(folder / "validation.jsonl", without_source(VALID))
    seen = LoadReport()
    train = load_mixture(folder, split="train", report=seen)
    valid = load_mixture(folder, split="validation")
    assert set(train["source"]) == set(valid["source"]) == {"my_data"}  # they match: natural is defined
    assert seen.source_missing
    note = seen.source_note(["my_data"])
    assert "category" in note and "prompt" in note and "--source-field" in note


def test_a_source_field_named_otherwise(tmp_path: Path):
    rows = [dict(r, category=r.pop("source")) for r in [dict(x) for x in TRAIN]]
    path = write(tmp_path / "data.jsonl", rows)
    assert source_sizes(load_mixture(path, source_field="category")) == TRAIN_SIZES
    write(path, rows + [{"prompt": "x", "response": "y"}])
    with pytest.raises(DataError, match=r"data.jsonl:9: missing field 'category' \(--source-field\); "
                                        r"the object has fields \['prompt', 'response'\]"):
        load_mixture(path, source_field="category")
    with pytest.raises(DataError, match=r"missing column 'category' \(--source-field\); columns are"):
        load_mixture(write(tmp_path / "data.parquet", TRAIN), source_field="category")


def test_validation_without_source_against_one_training_source_is_that_source(tmp_path: Path):
    train = load_mixture(write(tmp_path / "a.jsonl", without_source(TRAIN)))
    seen = LoadReport()
    valid = load_mixture(write(tmp_path / "b.jsonl", without_source(VALID)), report=seen)
    fixed, note = match_sources(["a"], valid, seen.source_missing)
    assert set(fixed["source"]) == {"a"} and set(train["source"]) == {"a"}
    assert "no source field" in note


def test_validation_sources_that_match_no_training_source_are_said_and_natural_is_nan(tmp_path: Path):
    valid = load_mixture(write(tmp_path / "v.jsonl", [dict(r, source="other") for r in VALID]))
    kept, note = match_sources(["add", "dbl"], valid, False, ["prompt", "response", "source", "task"])
    assert set(kept["source"]) == {"other"}
    assert "natural-mixture loss is undefined" in note and "--source-field" in note
    assert "(the validation rows' fields: prompt, response, source, task)" in note
    got = with_natural({"per_source": {"other": 2.0}, "mean": 2.0}, {"add": 5, "dbl": 3})
    assert math.isnan(got["natural"]) and got["mean"] == 2.0  # no exception: the run reports the rest


def test_a_hub_dataset_validates_on_its_own_validation_split(monkeypatch: pytest.MonkeyPatch):
    # No network here: a stand-in Hub answers datasets' two calls for one id, as the real Hub
    # (or the local datasets cache, offline) does for a dataset with train and validation splits.
    hub = {"train": datasets.Dataset.from_list(TRAIN), "validation": datasets.Dataset.from_list(VALID)}
    real_load = datasets.load_dataset

    def load_dataset(name, *args, split=None, **kwargs):
        if name != "someone/math-mix":
            return real_load(name, *args, split=split, **kwargs)
        return hub[split] if split else datasets.DatasetDict(hub)

    def get_dataset_split_names(name, *args, **kwargs):
        if name != "someone/math-mix":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.")
        return list(hub)

    monkeypatch.setattr(datasets, "get_dataset_split_names", get_dataset_split_names)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub_split_names.cache_clear()
    choice = choose_validation("someone/math-mix", None)
    assert (choice.spec, choice.split) == ("someone/math-mix", "validation")  # before: no validation
    assert "Hub dataset's own validation split" in choice.line()
    assert source_sizes(load_mixture(choice.spec, split=choice.split)) == VALID_SIZES
    # a Hub id whose splits cannot be read (unknown, or not cached while offline): no validation,
    # and the line says why (loading its training split is what stops the run)
    unknown = choose_validation("someone/unknown", None)
    assert unknown.spec is None and "could not read the splits of Hub dataset 'someone/unknown'" in unknown.line()
    assert "doesn't exist on the Hub" in unknown.line()
    # asked once per process: a second choice (colm_run.json's) cannot get another answer
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda *a, **k: ["train"])
    assert choose_validation("someone/math-mix", None).split == "validation"
    hub_split_names.cache_clear()
