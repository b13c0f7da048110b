from dataclasses import MISSING, fields

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q

from lifecycle.core.models import Job
from lifecycle.datasets.models import Dataset, DatasetVersion
from lifecycle.lib.params import MAX_ID, BadParameter, parse_id, parse_ids
from lifecycle.runs import basemodels
from lifecycle.runs.config import DEFAULT_LR, EARLY_STOPPING_METRICS, METHODS, PRECISIONS, SPLITS, TASKS, RunConfig

# The newest usable versions offered in the form; older ones stay reachable through the API.
VERSION_CHOICES_CAP = 200
COMPARE_MIN, COMPARE_MAX = 2, 5

ADVANCED = ("train_split", "eval_split", "test_split", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
            "num_virtual_tokens", "precision", "early_stopping_metric", "early_stopping_patience", "eval_every",
            "checkpoint_every", "gradient_checkpointing", "memory_limit_gb", "generate_limit")

LABELS = {
    "lora_r": "LoRA rank (r)", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "num_virtual_tokens": "Virtual tokens", "grad_accum": "Gradient accumulation", "max_length": "Max length (tokens)",
    "memory_limit_gb": "Memory limit (GB)", "eval_split": "Validation split", "early_stopping_metric": "Early stopping on",
    "eval_every": "Evaluate every", "checkpoint_every": "Checkpoint every", "generate_limit": "Generated test examples",
}

HELP = {
    "learning_rate": "Empty: the method's default (" + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items()) + ").",
    "epochs": "Passes over the training split (fractions allowed).",
    "max_steps": "Optimizer steps; when above 0 it wins over epochs.",
    "grad_accum": "Batches per optimizer step: the effective batch is batch size × this.",
    "max_length": "Tokens per example; longer examples are truncated.",
    "target_modules": "LoRA/IA3 only, comma-separated (e.g. query, value). Empty: peft's default for the model.",
    "num_virtual_tokens": "Prompt tuning only.",
    "eval_every": "Optimizer steps between evaluations; 0: at the end of each epoch and about 10 times in all.",
    "checkpoint_every": "Optimizer steps between checkpoints.",
    "memory_limit_gb": "The memory this run may use; 0: the device's own.",
    "generate_limit": "Causal LM: test examples generated to measure exact match.",
}


def usable_versions():
    """The newest versions training may use, as (pk, "slug vN (rows)") choices."""
    # The query narrows by the same rule; usable_for_training stays the one that decides.
    candidates = (DatasetVersion.objects.select_related("dataset", "pii_signoff").for_listing()
                  .filter(Q(has_leakage=False), ~Q(pii_status=DatasetVersion.PiiStatus.FOUND) | Q(pii_signoff__isnull=False),
                          ~Q(leakage_report__feasibility__meets_fractions=False) | Q(leakage_report__splits_from="given"))
                  .order_by("-created_at", "-pk")[:VERSION_CHOICES_CAP])
    return [(v.pk, f"{v.dataset.slug} v{v.number} ({v.row_count} rows)") for v in candidates if v.usable_for_training]


class UsableVersionField(forms.TypedChoiceField):
    """The usable versions as choices; a posted version that is not one of them is refused
    with the reason it may not be trained on, not a bare "not a valid choice"."""

    def validate(self, value):
        try:
            super().validate(value)
        except ValidationError:
            try:
                version = DatasetVersion.objects.select_related("dataset").filter(pk=parse_id(str(value))).first()
            except BadParameter:
                version = None
            blockers = version.training_blockers() if version else []
            if not blockers:
                raise
            raise ValidationError(f"{version} may not be used for training: {'; '.join(blockers)}.",
                                  code="not_usable") from None


def _label(name):
    return LABELS.get(name, name.replace("_", " ").capitalize())


def _config_field(f):
    """A form field for one RunConfig field: typed, not bounded (RunConfig checks the ranges,
    so the form, the API and the CLI give the same messages)."""
    default = f.default_factory() if f.default is MISSING else f.default
    options = {"required": False, "label": _label(f.name), "help_text": HELP.get(f.name, "")}
    if isinstance(default, bool):
        return forms.BooleanField(initial=default, **options)
    if isinstance(default, int):
        return forms.IntegerField(initial=default, widget=forms.NumberInput(attrs={"placeholder": default}), **options)
    if isinstance(default, float) or default is None:
        widget = forms.NumberInput(attrs={"step": "any", "placeholder": "" if default is None else f"{default:g}"})
        return forms.FloatField(initial=default, widget=widget, **options)
    if isinstance(default, list):
        return forms.CharField(max_length=500, widget=forms.TextInput(attrs={"placeholder": "query, value"}), **options)
    return forms.CharField(initial=default, max_length=300, **options)


class RunForm(forms.Form):
    """Every RunConfig field plus a name. The form cleans types; launch.start checks the rest."""

    name = forms.CharField(max_length=200, required=False, help_text="Empty: “method model on dataset vN”.")

    CHOICES = {"task": TASKS, "method": METHODS, "precision": PRECISIONS, "early_stopping_metric": EARLY_STOPPING_METRICS,
               "train_split": dict.fromkeys(SPLITS), "eval_split": dict.fromkeys(SPLITS), "test_split": dict.fromkeys(SPLITS)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for f in fields(RunConfig):
            self.fields[f.name] = self._field_for(f)
        self.order_fields(["dataset_version", "base_model", "task", "method", "name"])

    def _field_for(self, f):
        # Not required here: RunConfig names a missing version or model along with every other problem.
        if f.name == "dataset_version":
            return UsableVersionField(choices=[("", "— choose —")] + usable_versions(), coerce=int, required=False,
                                          label="Dataset version", help_text="Versions cleared for training, newest first.")
        if f.name == "base_model":
            names = list(basemodels.catalogue())
            return forms.ChoiceField(choices=[("", "— choose —")] + [(n, n) for n in names], required=False, label="Base model",
                                     help_text="" if names else "No base model is installed under the model roots.")
        if f.name in self.CHOICES:
            choices = [(key, label or key) for key, label in self.CHOICES[f.name].items()]
            return forms.ChoiceField(choices=choices, initial=f.default, required=False, label=_label(f.name))
        return _config_field(f)

    def basic_fields(self):
        return [self[name] for name in self.fields if name not in ADVANCED]

    def advanced_fields(self):
        return [self[name] for name in self.fields if name in ADVANCED]

    def advanced_has_errors(self):
        return any(name in self.errors for name in ADVANCED)

    def config_data(self):
        """The non-empty cleaned values as a plain dict, ready for launch.start()."""
        return {name: value for name, value in self.cleaned_data.items()
                if name != "name" and value not in (None, "", [])}

    def add_config_errors(self, errors):
        """Put a ConfigError's messages next to their fields ("" and unknown keys on top)."""
        for name, messages in errors.items():
            for message in messages:
                if name in self.fields:
                    self.add_error(name, message)
                else:
                    self.add_error(None, f"{name}: {message}" if name else message)


class RunFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "any status")] + list(Job.Status.choices), required=False)
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.order_by("slug"), to_field_name="slug",
                                     required=False, empty_label="any dataset")

    def filter(self, runs):
        if self.cleaned_data.get("status"):
            runs = runs.filter(job__status=self.cleaned_data["status"])
        if self.cleaned_data.get("dataset"):
            runs = runs.filter(dataset_version__dataset=self.cleaned_data["dataset"])
        return runs


class CompareForm(forms.Form):
    """`runs=1,2,3` (or `runs=1&runs=2`, as the list's checkboxes send it): 2 to 5 run ids."""

    runs = forms.CharField(max_length=200, required=False)

    def __init__(self, query):
        super().__init__({"runs": ",".join(query.getlist("runs"))})

    def clean_runs(self):
        try:
            ids = parse_ids(self.cleaned_data["runs"], "runs")
        except BadParameter as exc:
            raise ValidationError(f"{exc}.") from None
        if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
            raise ValidationError(f"Choose {COMPARE_MIN} to {COMPARE_MAX} runs to compare (got {len(ids)}).")
        return ids


class SinceForm(forms.Form):
    """`?since=<step>`: only points after that step (a poll asks for what is new). Evaluation
    points land later than the training points of the same step, so a poll may give the
    evaluation curves their own `eval_since`; it defaults to `since`."""

    since = forms.IntegerField(min_value=-1, max_value=MAX_ID, required=False)
    eval_since = forms.IntegerField(min_value=-1, max_value=MAX_ID, required=False)

    def steps(self):
        since = self.cleaned_data.get("since")
        eval_since = self.cleaned_data.get("eval_since")
        return since, since if eval_since is None else eval_since
