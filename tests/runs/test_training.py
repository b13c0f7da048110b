"""The training engine without a worker: batching, packing, the chunked loss, determinism,
checkpoint state, and the refusals of config, plan and model directory."""
import json
import math
import pickle
import shutil

import numpy as np
import pytest
import torch

from lifecycle.runs import basemodels, training
from lifecycle.runs import data as D
from lifecycle.runs.config import ConfigError, RunConfig
from lifecycle.runs.plan import DataSummary, check_plan
from tests.runs.factories import ANSWERS, MINILM, TINY


def cfg(**changes):
    return RunConfig.parse({"dataset_version": 1, "base_model": "m", **changes})


def tiny_trainer(tiny_model_dir, **changes):
    config = cfg(task="causal_lm", base_model=TINY, max_length=32, batch_size=4, **changes)
    torch.manual_seed(config.seed)
    model, tok = training.load_model(config, str(tiny_model_dir))
    items = list(ANSWERS.items()) * 4
    prompts, responses = [f"question: {q} ?" for q, _ in items], [a for _, a in items]
    ex = D.encode_causal(tok, prompts, responses, np.arange(len(items)), config.max_length)
    data = training.TrainData(ex, ex, ex, test_prompts=D.prompt_ids(tok, prompts[:3], 32), test_references=responses[:3])
    return training.Trainer(config, model, tok, data)


# --- Batches


def test_length_grouped_batches_cover_every_example_once_and_depend_only_on_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(3, 200, size=1000)
    batches = D.length_grouped_batches(lengths, 16, seed=1, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = D.length_grouped_batches(lengths, 16, seed=1, epoch=0)
    assert all((a == b).all() for a, b in zip(batches, again))
    assert any((a != b).any() for a, b in zip(batches, D.length_grouped_batches(lengths, 16, seed=1, epoch=1)))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_order = np.random.default_rng(1).permutation(1000)
    padded_random = sum(16 * lengths[random_order[i:i + 16]].max() for i in range(0, 1000, 16))
    assert padded < 0.7 * padded_random  # far less compute spent on padding


def test_causal_examples_carry_labels_on_the_response_only(tiny_model_dir):
    trainer = tiny_trainer(tiny_model_dir)
    ex = trainer.data.train
    ids, labels = ex.input_ids[0], ex.targets[0]
    tok = trainer.tokenizer
    prompt_len = 1 + len(tok("question: what is two plus two ?", add_special_tokens=False)["input_ids"])
    assert (labels[:prompt_len] == D.IGNORE).all()
    assert tok.decode(labels[prompt_len:], skip_special_tokens=True).strip() == ANSWERS[list(ANSWERS)[0]]
    assert labels[-1] == tok.eos_token_id and len(ids) == len(labels)


def test_a_packed_batch_has_the_loss_of_its_examples_alone(tiny_model_dir):
    """Block-diagonal attention from restarted positions: no example sees another."""
    trainer = tiny_trainer(tiny_model_dir)
    ex, model = trainer.data.train, trainer.model
    model.eval()
    index = np.array([0, 5, 9])
    with torch.no_grad():
        packed_sum, packed_tokens = trainer._chunked_lm_loss(D.collate_packed(ex, index), reduction="sum")
        alone_sum, alone_tokens = 0.0, 0
        for i in index:
            batch = D.collate_padded(ex, np.array([i]), trainer.tokenizer.pad_token_id, token_labels=True)
            n = int((batch["labels"][:, 1:] != D.IGNORE).sum())
            alone_sum += float(model(**batch).loss) * n
            alone_tokens += n
    assert packed_tokens == alone_tokens
    assert float(packed_sum) == pytest.approx(alone_sum, rel=1e-5)


def test_the_chunked_loss_equals_the_full_logits_loss(tiny_model_dir, monkeypatch):
    trainer = tiny_trainer(tiny_model_dir)
    monkeypatch.setattr(training, "LOSS_CHUNK_TOKENS", 3)  # many chunks, one partial
    batch = D.collate_packed(trainer.data.train, np.arange(6))
    with torch.no_grad():
        chunked = trainer._chunked_lm_loss(batch)
        base = trainer.model.get_base_model()
        logits = base(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        full = torch.nn.functional.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=D.IGNORE)
    assert float(chunked) == pytest.approx(float(full), rel=1e-5)


# --- Determinism and checkpoints


def test_same_seed_data_and_config_give_the_same_numbers(tiny_model_dir):
    runs = [tiny_trainer(tiny_model_dir, method="lora", max_steps=6, learning_rate=1e-2) for _ in range(2)]
    reports = [t.fit() for t in runs]
    assert reports[0] == reports[1]
    assert [v["loss"] for _, v in runs[0].reporter.steps] == [v["loss"] for _, v in runs[1].reporter.steps]
    other = tiny_trainer(tiny_model_dir, method="lora", max_steps=6, learning_rate=1e-2, seed=1)
    other.fit()
    assert [v["loss"] for _, v in other.reporter.steps] != [v["loss"] for _, v in runs[0].reporter.steps]


def test_checkpoint_state_round_trips_with_weights_only_and_refuses_pickled_code(tiny_model_dir):
    trainer = tiny_trainer(tiny_model_dir, max_steps=2)
    trainer.fit()
    state = training.load_state(training.state_bytes(trainer.state()))
    assert state["step"] == 2 and torch.equal(state["rng_torch"], trainer.state()["rng_torch"])

    class Evil:
        def __reduce__(self):
            return (print, ("this would run on load",))

    buffer = training.state_bytes({"step": 1, "payload": Evil()})
    with pytest.raises(pickle.UnpicklingError):
        training.load_state(buffer)


def test_restore_refuses_a_checkpoint_of_another_method(tiny_model_dir):
    lora = tiny_trainer(tiny_model_dir, method="lora", max_steps=1)
    full = tiny_trainer(tiny_model_dir, method="full", max_steps=1)
    with pytest.raises(ValueError, match="different method or model"):
        full.restore(lora._weights(), lora.state())


# --- Config


@pytest.mark.parametrize("changes, field, message", [
    ({"learning_rate": 0}, "learning_rate", "above 0"),
    ({"learning_rate": -1e-3}, "learning_rate", "above 0"),
    ({"learning_rate": "nan"}, "learning_rate", "not NaN"),
    ({"learning_rate": float("inf")}, "learning_rate", "not infinite"),
    ({"batch_size": 0}, "batch_size", "between 1"),
    ({"batch_size": 2.5}, "batch_size", "whole number"),
    ({"method": "qlora"}, "method", "must be one of"),
    ({"task": "causal_lm", "early_stopping_metric": "accuracy"}, "early_stopping_metric", "classification only"),
    ({"train_split": "test"}, "train_split", "must differ"),
    ({"target_modules": ["q_proj; rm -rf /"]}, "target_modules", "letters, digits"),
    ({"surprise": 1}, "", "unknown settings: surprise"),
])
def test_bad_settings_are_refused_with_the_field_named(changes, field, message):
    with pytest.raises(ConfigError) as raised:
        cfg(**changes)
    assert any(message in m for m in raised.value.errors[field]), raised.value.errors


def test_defaults_fill_in_and_the_used_learning_rate_is_recorded():
    config = cfg(method="ia3")
    assert config.as_dict()["learning_rate"] == 3e-3 and config.batch_size == 16


# --- Plan


def minilm():
    return basemodels.get(MINILM)


def summary(train=None, test=None, task="classification", blocked=()):
    train = train or {"a": 10, "b": 10}
    test = test or {"a": 2, "b": 2}
    return DataSummary(task, {"train": train, "validation": dict(train), "test": test}, list(blocked))


def refusal(config, data, model=None, **kwargs):
    with pytest.raises(ConfigError) as raised:
        check_plan(config, data, model or minilm(), **kwargs)
    return raised.value.errors


def test_a_single_class_cannot_train_a_classifier(settings):
    errors = refusal(cfg(), summary(train={"a": 20}))
    assert "the training split has 1 class: a classifier needs at least two" in errors["dataset_version"]


def test_labels_unseen_in_training_are_a_warning_not_a_refusal():
    plan = check_plan(cfg(), summary(test={"a": 1, "b": 1, "zebra": 3}), minilm())
    assert plan.warnings and "zebra" in plan.warnings[0]


def test_task_and_model_must_agree():
    errors = refusal(cfg(task="causal_lm"), summary(task="sft", train={"": 10}, test={"": 2}))
    assert "causal-LM fine-tuning needs a decoder model" in errors["base_model"][0]
    errors = refusal(cfg(), summary(task="sft", train={"": 10}, test={"": 2}))
    assert "prompt/response pairs" in errors["task"][0]


def test_lengths_target_modules_and_memory_are_checked_against_the_model():
    errors = refusal(cfg(max_length=600), summary())
    assert "above all-MiniLM-L6-v2's limit of 512 positions" in errors["max_length"][0]
    errors = refusal(cfg(method="prompt_tuning", max_length=500, num_virtual_tokens=20), summary())
    assert "plus 20 virtual tokens" in errors["max_length"][0]
    errors = refusal(cfg(target_modules=["q_proj"]), summary())
    assert "has no module called q_proj" in errors["target_modules"][0] and "query" in errors["target_modules"][0]
    errors = refusal(cfg(method="prompt_tuning", target_modules=["query"]), summary())
    assert "apply to LoRA and IA3" in errors["target_modules"][0]
    errors = refusal(cfg(batch_size=512, max_length=512, memory_limit_gb=1), summary())
    assert "gradient accumulation" in errors["batch_size"][0] and "512" in errors["batch_size"][0]
    assert check_plan(cfg(target_modules=["query", "value"]), summary(), minilm()).memory_gb < 1


def test_a_version_kept_out_of_training_is_refused():
    errors = refusal(cfg(), summary(blocked=["v1 leaks between its splits"]))
    assert errors["dataset_version"] == ["v1 leaks between its splits"]


# --- Model directories


def copy_model(tmp_path, tiny_model_dir, name="m"):
    target = tmp_path / name
    shutil.copytree(tiny_model_dir, target)
    return target


def test_a_directory_with_pickle_weights_only_is_refused(tmp_path, tiny_model_dir):
    path = copy_model(tmp_path, tiny_model_dir)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(basemodels.ModelDirError, match="only pickle weights .*safetensors only"):
        basemodels.inspect(path)
    (path / "pytorch_model.bin").unlink()
    with pytest.raises(basemodels.ModelDirError, match="has no weights"):
        basemodels.inspect(path)


@pytest.mark.parametrize("config_name", ["config.json", "tokenizer_config.json"])
def test_remote_code_hooks_are_refused_before_loading(tmp_path, tiny_model_dir, config_name):
    path = copy_model(tmp_path, tiny_model_dir)
    config = json.loads((path / config_name).read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (path / config_name).write_text(json.dumps(config))
    with pytest.raises(basemodels.ModelDirError, match="asks for remote code"):
        basemodels.inspect(path)


def test_the_catalogue_lists_model_directories_under_each_root(tmp_path, tiny_model_dir):
    copy_model(tmp_path / "root", tiny_model_dir, "a")
    copy_model(tmp_path / "root" / "family", tiny_model_dir, "b")
    (tmp_path / "root" / "notes").mkdir()
    found = basemodels.catalogue({"lab": tmp_path / "root", "gone": tmp_path / "missing"})
    assert sorted(found) == ["lab/a", "lab/family/b"]
    with pytest.raises(basemodels.ModelDirError, match="no base model called 'lab/../etc'"):
        basemodels.get("lab/../etc", {"lab": tmp_path / "root"})
    with pytest.raises(basemodels.ModelDirError, match="is missing"):
        basemodels.inspect(tmp_path / "missing")


def test_the_model_hash_covers_every_file(tmp_path, tiny_model_dir):
    path = copy_model(tmp_path, tiny_model_dir)
    before = basemodels.directory_sha256(path)
    assert before == basemodels.directory_sha256(path)
    config = json.loads((path / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5 if not math.isclose(config.get("rms_norm_eps", 0), 1e-5) else 1e-6
    (path / "config.json").write_text(json.dumps(config))
    assert basemodels.directory_sha256(path) != before
