"""A run's configuration: one dataclass with defaults, checked twice.

`RunConfig.parse(data)` checks each field on its own (types, ranges, NaN); `check_plan()` in
runs/plan.py then checks the combination against the dataset version and the base model
(task and model agree, target modules exist, lengths fit, memory fits). Both return every
problem at once, as messages a person can act on. Django-free, so the benchmark and the
worker use the same code as the form.
"""
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from lifecycle.lib.params import parse_float, parse_int

TASKS = {"classification": "sequence classification", "causal_lm": "causal-LM supervised fine-tuning"}
METHODS = {"full": "full fine-tuning", "lora": "LoRA", "ia3": "IA3", "prompt_tuning": "prompt tuning"}
PRECISIONS = {"auto": "auto (bf16 on GPU, fp32 on CPU)", "fp32": "fp32", "bf16": "bf16"}
EARLY_STOPPING_METRICS = {"": "off", "eval_loss": "validation loss", "accuracy": "validation accuracy",
                          "macro_f1": "validation macro F1"}
SPLITS = ("train", "validation", "test")

# With eval_every left at 0, a run evaluates about this many times in all (and at the end of
# every epoch): a run shorter than one epoch still draws a validation curve, not a single dot.
DEFAULT_EVALUATIONS = 10

# Learning rates that work for each method when the user gives none: parameter-efficient
# methods train few weights and want larger steps.
DEFAULT_LR = {"full": 5e-5, "lora": 1e-3, "ia3": 3e-3, "prompt_tuning": 3e-2}


class ConfigError(ValueError):
    """The configuration cannot run; `errors` maps a field (or "" for the whole) to messages."""

    def __init__(self, errors):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {m}" if k else m for k, ms in errors.items() for m in ms))


@dataclass
class RunConfig:
    dataset_version: int = 0
    base_model: str = ""
    task: str = "classification"
    method: str = "lora"
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    learning_rate: float | None = None
    epochs: float = 3.0
    max_steps: int = 0  # when set, wins over epochs
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: list = field(default_factory=list)  # empty: peft's default for the model type
    num_virtual_tokens: int = 20
    seed: int = 0
    precision: str = "auto"
    early_stopping_metric: str = ""
    early_stopping_patience: int = 3
    eval_every: int = 0  # optimizer steps between evaluations; 0: see evaluates_at
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False
    memory_limit_gb: float = 0.0  # the memory this run may use; 0: the device's own
    generate_limit: int = 100  # causal LM: test examples generated for exact match

    @classmethod
    def field_names(cls):
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, data):
        """A checked config from a dict (form, JSON API, CLI file); raises ConfigError."""
        errors = {}
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            errors[""] = [f"unknown settings: {', '.join(unknown)}"]
        values = {}
        for f in fields(cls):
            if f.name in data and data[f.name] is not None and data[f.name] != "":
                try:
                    values[f.name] = _coerce(data[f.name], _default(f))
                except (TypeError, ValueError) as exc:
                    errors.setdefault(f.name, []).append(str(exc))
        config = cls(**values)
        for name, message in config._range_errors():
            errors.setdefault(name, []).append(message)
        if errors:
            raise ConfigError(errors)
        return config

    def _range_errors(self):
        yield from _choice("task", self.task, TASKS)
        yield from _choice("method", self.method, METHODS)
        yield from _choice("precision", self.precision, PRECISIONS)
        yield from _choice("early_stopping_metric", self.early_stopping_metric, EARLY_STOPPING_METRICS)
        for name in ("train_split", "eval_split", "test_split"):
            yield from _choice(name, getattr(self, name), dict.fromkeys(SPLITS))
        if self.train_split in (self.eval_split, self.test_split):
            yield "train_split", "the training split must differ from the validation and test splits"
        if not self.dataset_version:
            yield "dataset_version", "choose a dataset version"
        if not self.base_model:
            yield "base_model", "choose a base model"
        lr = self.lr
        if not (math.isfinite(lr) and 0 < lr <= 1):
            yield "learning_rate", f"must be a number above 0 and at most 1 (got {lr})"
        yield from _bounds(self, "epochs", 0.01, 1000)
        yield from _bounds(self, "max_steps", 0, 10_000_000)
        yield from _bounds(self, "batch_size", 1, 4096)
        yield from _bounds(self, "grad_accum", 1, 1024)
        yield from _bounds(self, "warmup_ratio", 0, 0.9)
        yield from _bounds(self, "weight_decay", 0, 1)
        yield from _bounds(self, "max_grad_norm", 0, 1e6)
        yield from _bounds(self, "max_length", 8, 1_000_000)
        yield from _bounds(self, "lora_r", 1, 1024)
        yield from _bounds(self, "lora_alpha", 1, 4096)
        yield from _bounds(self, "lora_dropout", 0, 0.9)
        yield from _bounds(self, "num_virtual_tokens", 1, 512)
        yield from _bounds(self, "seed", 0, 2**31 - 1)
        yield from _bounds(self, "early_stopping_patience", 1, 1000)
        yield from _bounds(self, "eval_every", 0, 10_000_000)
        yield from _bounds(self, "checkpoint_every", 1, 10_000_000)
        yield from _bounds(self, "memory_limit_gb", 0, 100_000)
        yield from _bounds(self, "generate_limit", 0, 100_000)
        if self.early_stopping_metric in ("accuracy", "macro_f1") and self.task != "classification":
            yield "early_stopping_metric", "accuracy and macro F1 exist for classification only; use validation loss"
        if any(not isinstance(m, str) or not m.replace("_", "").replace(".", "").isalnum() for m in self.target_modules):
            yield "target_modules", "module names are letters, digits, dots and underscores"

    @property
    def lr(self):
        return DEFAULT_LR.get(self.method, 1e-3) if self.learning_rate is None else self.learning_rate

    def evaluates_at(self, step, steps_per_epoch, total_steps):
        """Whether the loop evaluates after optimizer step `step` (a function of the step alone,
        so a resumed run evaluates where the first attempt would have)."""
        if step == total_steps:
            return True
        if self.eval_every:
            return step % self.eval_every == 0
        spacing = max(1, math.ceil(total_steps / DEFAULT_EVALUATIONS))
        return step % steps_per_epoch == 0 or step % spacing == 0

    def as_dict(self):
        data = asdict(self)
        data["learning_rate"] = self.lr  # what the run really used, not "default"
        return data


def _default(f):
    if f.default is MISSING:
        return f.default_factory()
    return 0.0 if f.default is None else f.default  # None: an optional number


def _coerce(value, default):
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "on", "yes")
        return bool(value)
    if isinstance(default, list):
        if isinstance(value, str):
            value = [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError("must be a list of module names")
        return [str(v) for v in value]
    # Ranges are checked with every other problem by _range_errors; these bounds only keep
    # a number small enough for the database and for int(float(...)).
    if isinstance(default, int):
        return parse_int(value)
    if isinstance(default, float):
        return parse_float(value)
    return str(value).strip()


def _choice(name, value, allowed):
    if value not in allowed:
        yield name, f"must be one of {', '.join(repr(a) for a in allowed)} (got {value!r})"


def _bounds(config, name, low, high):
    value = getattr(config, name)
    if not (low <= value <= high):
        yield name, f"must be between {low} and {high} (got {value})"
