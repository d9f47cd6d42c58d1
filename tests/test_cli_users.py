"""`colm train` conventions: --report-to takes several values (flags and YAML lists) and checks
them, and --use-chat-template renders prompt/response rows with the tokenizer's own chat
template, for training and for the `colm evaluate` of that run."""
from __future__ import annotations

import copy
import json

import pytest
from test_cli import MICRO, assert_usage_error, run_cli

from colm.cli.train import parse
from colm.data import DataError
from colm.data.arguments import DataArguments

pytestmark = pytest.mark.usefixtures("offline_env")  # tests/conftest.py


def test_report_to_takes_several_values_and_a_yaml_list(tmp_path):
    assert parse(["--report-to", "tensorboard", "wandb"])[3].report_to == ["tensorboard", "wandb"]
    config = tmp_path / "run.yaml"
    config.write_text("report_to: [tensorboard, mlflow]\n", encoding="utf-8")
    assert parse(["--config", str(config)])[3].report_to == ["tensorboard", "mlflow"]
    config.write_text("report_to: none\n", encoding="utf-8")
    assert parse(["--config", str(config)])[3].report_to == []
    assert parse([])[3].report_to == []  # colm's default: none


@pytest.mark.parametrize("values, needles", [
    (["tensorbord"], ["--report-to", "unknown integration 'tensorbord'", "tensorboard"]),
    (["none", "wandb"], ["--report-to", "'all' and 'none' stand alone"]),
])
def test_bad_report_to_values_are_named(values, needles, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--output-dir", tmp_path / "out", "--report-to", *values)
    assert_usage_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_an_integration_that_is_not_installed_is_named(tmp_path, capsys, monkeypatch):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: ["tensorboard"])
    code, _, err = run_cli(capsys, "train", "--output-dir", tmp_path / "out", "--report-to", "tensorboard", "wandb")
    assert_usage_error(code, err, "--report-to: wandb is not installed", "installed: tensorboard")


def _prepare(tokenizer, **data):
    from colm.data import prepare as dataprep

    args = DataArguments(sources=["gsm8k", "svamp"], max_examples_per_source=3, max_length=256, **data)
    return dataprep.prepare_data(args, tokenizer, seed=0)


def test_use_chat_template_renders_prompt_response_rows_with_the_tokenizers_template():
    from colm.models.default import default_tokenizer

    tokenizer = default_tokenizer()
    plain, chat = _prepare(tokenizer), _prepare(tokenizer, use_chat_template=True)
    assert chat.train["source"] == plain.train["source"]
    for k, row in enumerate(chat.train):
        raw = plain.train_raw[k]
        messages = [{"role": "user", "content": raw["prompt"]}, {"role": "assistant", "content": raw["response"]}]
        context = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        assert tokenizer.decode(row["input_ids"]) == full
        # the loss sees exactly the assistant's answer (and its end-of-turn token)
        supervised = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
        assert tokenizer.decode(supervised) == full[len(context):]
        assert tokenizer.decode(plain.train[k]["input_ids"]).startswith("Question: ")
    assert "messages" in chat.eval_raw.column_names  # validation is rendered the same way


def test_use_chat_template_needs_a_tokenizer_that_has_one():
    from colm.models.default import default_tokenizer

    tokenizer = copy.deepcopy(default_tokenizer())
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="--use-chat-template: the model's tokenizer has no chat template"):
        _prepare(tokenizer, use_chat_template=True)


def test_use_chat_template_with_template_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--output-dir", tmp_path / "out", "--use-chat-template",
                           "--template", "Q: {prompt}\nA:")
    assert_usage_error(code, err, "--template: unused with --use-chat-template")


def test_a_chat_template_run_is_evaluated_in_its_chat_format(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", out, "--use-chat-template")
    assert code == 0, err
    assert json.loads((out / "colm_run.json").read_text())["use_chat_template"] is True
    assert json.loads((out / "report.json").read_text())["config"]["data"]["use_chat_template"] is True
    for flag, expected in (([], True), (["--use-chat-template", "false"], False)):
        code, _, err = run_cli(capsys, "evaluate", "--checkpoint", out, "--sources", "gsm8k",
                               "--max-examples-per-source", "2", "--output", tmp_path / "e.json", *flag)
        assert code == 0, err
        assert json.loads((tmp_path / "e.json").read_text())["use_chat_template"] is expected


def test_a_cluster_that_never_reached_a_pool_has_share_zero_not_nan():
    from colm.cli.report import pseudo_sources_markdown

    summary = {"fitted": True, "k": 3, "rows": 30, "fitted_at_step": 2, "embed_s": 0.1, "kmeans_s": 0.1,
               "small": [], "sizes": {"cluster_0": 20, "cluster_1": 9, "cluster_2": 1}}
    shares = {"cluster_0": {"pool_share": 0.75, "selected_share": 0.5},
              "cluster_1": {"pool_share": 0.25, "selected_share": 0.5}}
    text = "\n".join(pseudo_sources_markdown(summary, shares))
    row = next(line for line in text.splitlines() if line.startswith("| cluster_2"))
    assert "nan" not in text and row.replace(" ", "").startswith("|cluster_2|1|0")
