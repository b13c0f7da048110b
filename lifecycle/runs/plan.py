"""Does this configuration make sense for this data and this model? Checked before a run is
queued (the form, the API, the CLI) and again by the worker before it loads anything.

Every check here is cheap: the model is known from its config.json and safetensors headers,
the data from the version's manifest. Django-free: callers pass a `DataSummary`.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle.runs import basemodels
from lifecycle.runs.config import ConfigError

DATASET_TASK = {"classification": "classification", "causal_lm": "sft"}


@dataclass
class DataSummary:
    task: str  # the dataset's: "classification" or "sft"
    counts: dict  # {split: {label: n}} from the version manifest
    blocked: list = field(default_factory=list)  # reasons the version may not be used for training

    def size(self, split):
        return sum(self.counts.get(split, {}).values())

    def labels(self, split):
        return {label for label, n in self.counts.get(split, {}).items() if n and label != ""}

    def class_labels(self, config):
        """(the classes a classifier learns: the training split's, sorted; the same followed by
        any label only the validation or test split has, which the evaluation counts as errors)."""
        train = sorted(self.labels(config.train_split))
        other = self.labels(config.eval_split) | self.labels(config.test_split)
        return train, train + sorted(other - set(train))


@dataclass
class Plan:
    config: object
    model: object
    warnings: list = field(default_factory=list)
    memory_gb: float = 0.0


def check_plan(config, data, model, *, device_memory_gb=None):
    """A Plan, or ConfigError listing every reason the run cannot start."""
    errors, warnings = {}, []

    def refuse(name, message):
        errors.setdefault(name, []).append(message)

    _check_data(config, data, refuse, warnings)
    _check_model(config, model, refuse)
    memory = estimate_memory_gb(config, model)
    limit = config.memory_limit_gb or device_memory_gb
    if limit and memory > limit:
        refuse("batch_size", f"about {memory:.1f} GB needed at batch size {config.batch_size} and length "
                             f"{config.max_length}, more than the {limit:g} GB available. Use a smaller batch with "
                             f"gradient accumulation (same effective batch), a shorter max length, or gradient checkpointing.")
    if errors:
        raise ConfigError(errors)
    return Plan(config, model, warnings, memory)


def _check_data(config, data, refuse, warnings):
    for reason in data.blocked:
        refuse("dataset_version", reason)
    if data.task != DATASET_TASK[config.task]:
        refuse("task", f"this dataset holds {'labelled texts' if data.task == 'classification' else 'prompt/response pairs'}, "
                       f"which {config.task.replace('_', '-')} training cannot use")
        return
    for split in (config.train_split, config.eval_split, config.test_split):
        if data.size(split) == 0:
            refuse("dataset_version", f"the {split} split of this version is empty")
    if config.task != "classification":
        return
    train_labels, all_labels = data.class_labels(config)
    if len(train_labels) < 2:
        refuse("dataset_version", f"the training split has {len(train_labels)} class"
                                  f"{'' if len(train_labels) == 1 else 'es'}: a classifier needs at least two")
    unseen = all_labels[len(train_labels):]
    if unseen and len(train_labels) >= 2:
        warnings.append(f"labels in the validation/test splits never seen in training: {', '.join(unseen)} — "
                        "the model cannot predict them; they count as errors in the evaluation")


def _check_model(config, model, refuse):
    if config.task == "causal_lm" and not model.can_generate:
        refuse("base_model", f"{model.name} is an encoder ({model.model_type}) without a language-model head: "
                             "causal-LM fine-tuning needs a decoder model")
    limit = model.max_positions
    used = config.max_length + (config.num_virtual_tokens if config.method == "prompt_tuning" else 0)
    if limit and used > limit:
        extra = f" plus {config.num_virtual_tokens} virtual tokens" if config.method == "prompt_tuning" else ""
        refuse("max_length", f"max length {config.max_length}{extra} is above {model.name}'s limit of {limit} positions")
    if config.method == "prompt_tuning" and config.gradient_checkpointing:
        refuse("gradient_checkpointing", "prompt tuning trains no weights inside the model: gradient checkpointing has nothing to save")
    if config.target_modules and config.method not in ("lora", "ia3"):
        refuse("target_modules", f"target modules apply to LoRA and IA3, not {config.method.replace('_', ' ')}")
    if config.target_modules and config.method in ("lora", "ia3"):
        names = basemodels.module_names(model)
        missing = [t for t in config.target_modules if not basemodels.has_module(names, t)]
        if missing:
            refuse("target_modules", f"{model.name} has no module called {', '.join(missing)} "
                                     f"(its linear layers: {', '.join(basemodels.linear_names(model))})")


def estimate_memory_gb(config, model):
    """A deliberately rough upper estimate: weights, gradients and AdamW state for what
    trains, and activations per token (Korthikanti et al., 2022: about 34·h bytes per token
    and layer in 16-bit, plus 5·heads·seq bytes for attention scores; doubled for fp32)."""
    c = model.config
    hidden = c.get("hidden_size") or c.get("n_embd") or c.get("d_model") or 768
    layers = c.get("num_hidden_layers") or c.get("n_layer") or 12
    heads = c.get("num_attention_heads") or c.get("n_head") or 12
    params = parameter_count(model)
    bytes_per = 2 if config.precision == "bf16" else 4
    trainable = params if config.method == "full" else params * 0.02
    states = params * bytes_per + trainable * (4 + 8)  # fp32 gradients and two Adam moments
    tokens = config.batch_size * config.max_length
    per_layer = tokens * (34 * hidden + 5 * heads * config.max_length) * (bytes_per / 2)
    activations = per_layer * (math.sqrt(layers) if config.gradient_checkpointing else layers)
    return (states + activations) / 1024**3


def parameter_count(model):
    """Parameters, from the safetensors headers' shapes (no weights read)."""
    return sum(math.prod(info.get("shape", [])) for path in sorted(Path(model.path).glob("*.safetensors"))
               for info in basemodels.safetensors_header(path).values())
