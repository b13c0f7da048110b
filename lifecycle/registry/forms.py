"""Forms of the registry's pages. They clean what a person typed; the model methods decide
what the registry's state allows (and say why in a RegistryError, which the views put on the form)."""
import re

from django import forms
from django.core.exceptions import ValidationError

from lifecycle.lib.params import BadParameter, parse_float, parse_id
from lifecycle.registry.models import MOVES, SINGLE_STAGES, RegisteredModel, Stage
from lifecycle.runs.models import Run

TEXT_LIMIT = 2000  # reasons and comments
HEX64 = re.compile(r"^[0-9a-f]{64}$")
# One threshold per line: "accuracy >= 0.8" (a minimum) or "ece <= 0.15" (a maximum).
THRESHOLD_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]{0,49})\s*(>=|<=)\s*(\S+)\s*$")
OPERATORS = {">=": "min", "<=": "max"}
GATED_STAGES = (Stage.STAGING, Stage.PRODUCTION)
MAX_APPROVALS = 10


def _textarea(rows=3, **attrs):
    return forms.Textarea(attrs={"rows": rows, **attrs})


class ModelForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=80, required=False, help_text="Empty: made from the name. Part of every URL of the model.")
    description = forms.CharField(max_length=5000, required=False, widget=_textarea(4),
                                  help_text="What the model is for; it becomes the “Intended use” of each version's card.")


class RegisterForm(forms.Form):
    """A run (by id) and the model to register it under: an existing one, or a new one named here."""

    run = forms.CharField(label="Run", widget=forms.Select)
    model = forms.ModelChoiceField(queryset=RegisteredModel.objects.order_by("name"), to_field_name="slug",
                                   required=False, empty_label="— a new model —", label="Model")
    new_model_name = forms.CharField(max_length=200, required=False, label="New model's name",
                                     help_text="Only when the model above is “a new model”.")

    def __init__(self, *args, run_choices=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["run"].widget.choices = [("", "— choose —"), *run_choices]

    def clean_run(self):
        try:
            run_id = parse_id(self.cleaned_data["run"], "run")
        except BadParameter as exc:
            raise ValidationError(f"The {exc}.") from None
        run = Run.objects.for_listing().filter(pk=run_id).first()
        if run is None:
            raise ValidationError(f"There is no run {run_id}.")
        return run

    def clean(self):
        data = super().clean()
        name = (data.get("new_model_name") or "").strip()
        if data.get("model") and name:
            self.add_error("new_model_name", "Choose an existing model or name a new one, not both.")
        elif not data.get("model") and not name and "model" not in self.errors:
            self.add_error("new_model_name", "Name the new model (or choose an existing one above).")
        data["new_model_name"] = name
        return data


class CardForm(forms.Form):
    card = forms.CharField(max_length=100_000, required=False, strip=False, label="Model card (Markdown)",
                           widget=_textarea(28, spellcheck="true"),
                           help_text="Markdown. Raw HTML is shown as text, and only http, https and mailto links are kept.")


class PromoteForm(forms.Form):
    to_stage = forms.ChoiceField(label="Move to")
    reason = forms.CharField(max_length=TEXT_LIMIT, widget=_textarea(3), label="Why",
                             help_text="Approvers read this first; the audit trail keeps it.")

    def __init__(self, *args, version, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["to_stage"].choices = [(str(stage), str(stage)) for stage in MOVES[Stage(version.stage)]]


class ApproveForm(forms.Form):
    """An approval: a comment, the evidence hash the page showed, and a written reason for each
    failed gate the approver lets through (one field per failed gate)."""

    comment = forms.CharField(max_length=TEXT_LIMIT, required=False, widget=_textarea(2), label="Comment")
    evidence_sha256 = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args, failed_gates=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.gate_fields = []
        for gate in failed_gates:
            name = f"override_{gate['gate']}"
            self.fields[name] = forms.CharField(
                max_length=TEXT_LIMIT, required=False, widget=_textarea(2), label=f"Override “{gate['gate']}”: why it may pass",
                help_text="Stays on this request in red, for good. Leave empty to keep the gate blocking.")
            self.gate_fields.append(name)

    def clean_evidence_sha256(self):
        value = self.cleaned_data["evidence_sha256"].strip()
        if not HEX64.match(value):
            raise ValidationError("The page's evidence hash is missing or malformed; reload the request and review it again.")
        return value

    def overrides(self):
        return {name.removeprefix("override_"): self.cleaned_data[name].strip() for name in self.gate_fields
                if self.cleaned_data.get(name, "").strip()}

    def override_fields(self):
        return [self[name] for name in self.gate_fields]


class RejectForm(forms.Form):
    comment = forms.CharField(max_length=TEXT_LIMIT, widget=_textarea(2), label="Why it is rejected",
                              error_messages={"required": "Say why: rejecting needs a comment."})


class HeldAtForm(forms.Form):
    """“Which version held this stage at time T” (the model page's timeline)."""

    stage = forms.ChoiceField(choices=[(str(s), str(s)) for s in (Stage.PRODUCTION, Stage.STAGING)], initial=str(Stage.PRODUCTION))
    at = forms.DateTimeField(label="At (UTC)", widget=forms.DateTimeInput(
                                 attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"),
                             error_messages={"invalid": "Give a date and time, such as 2026-03-01 14:30."})


# --- settings --------------------------------------------------------------------------------


def threshold_lines(metrics):
    """The stored {metric: {"min"|"max": x}} as the lines the settings form edits."""
    lines = []
    for metric, bound in sorted((metrics or {}).items()):
        lines += [f"{metric} {op} {bound[key]:g}" for op, key in OPERATORS.items() if key in bound]
    return "\n".join(lines)


def parse_thresholds(text):
    """{metric: {"min": x, "max": y}} from lines of "metric >= x" or "metric <= y"; a
    ValidationError naming every bad line."""
    found, problems = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = THRESHOLD_LINE.match(line)
        if not match:
            problems.append(f"line {number} (“{line.strip()[:60]}”) is not “metric >= number” or “metric <= number”")
            continue
        metric, op, value = match.groups()
        try:
            bound = parse_float(value, metric)
        except BadParameter as exc:
            problems.append(f"line {number}: {exc}")
            continue
        key = OPERATORS[op]
        if key in found.get(metric, {}):
            problems.append(f"line {number}: {metric} has a {'minimum' if key == 'min' else 'maximum'} already")
            continue
        found.setdefault(metric, {})[key] = bound
    for metric, bound in found.items():
        if "min" in bound and "max" in bound and bound["min"] > bound["max"]:
            problems.append(f"{metric}: the minimum {bound['min']:g} is above the maximum {bound['max']:g}")
    if problems:
        message = "; ".join(problems)
        raise ValidationError(message[0].upper() + message[1:] + ".")
    return found


class SettingsForm(forms.Form):
    """Gate thresholds per target stage and the approvals each stage needs. Fields are made per
    stage: `<stage>_metrics`, `<stage>_tolerance`, `<stage>_approvals`."""

    def __init__(self, *args, model, **kwargs):
        super().__init__(*args, **kwargs)
        for stage in GATED_STAGES:
            current = model.gate_settings.get(str(stage)) or {}
            self.fields[f"{stage}_metrics"] = forms.CharField(
                required=False, max_length=5000, widget=_textarea(4, spellcheck="false"), label=f"{stage.label}: metric thresholds",
                initial=threshold_lines(current.get("metrics")), help_text="One per line: “accuracy >= 0.8” or “ece <= 0.15”.")
            self.fields[f"{stage}_tolerance"] = forms.FloatField(
                required=False, min_value=0, max_value=1, label=f"{stage.label}: regression tolerance",
                initial=current.get("regression_tolerance"), widget=forms.NumberInput(attrs={"step": "any"}),
                help_text="The largest drop allowed in each minimum metric against the production version; empty: no check.")
        for stage in (*GATED_STAGES, Stage.ARCHIVED):
            low = 1 if stage in SINGLE_STAGES else 0
            self.fields[f"{stage}_approvals"] = forms.IntegerField(
                min_value=low, max_value=MAX_APPROVALS, initial=model.approvals_for(stage),
                label=f"Approvals to move a version to {stage}",
                help_text=f"{low} to {MAX_APPROVALS}, each from a different approver.")

    def clean(self):
        data = super().clean()
        for stage in GATED_STAGES:
            name = f"{stage}_metrics"
            if name in data:
                try:
                    data[name] = parse_thresholds(data[name])
                except ValidationError as exc:
                    self.add_error(name, exc)
        return data

    def stage_fields(self):
        return [(stage.label, [self[f"{stage}_metrics"], self[f"{stage}_tolerance"]]) for stage in GATED_STAGES]

    def approval_fields(self):
        return [self[f"{stage}_approvals"] for stage in (*GATED_STAGES, Stage.ARCHIVED)]

    def gate_settings(self):
        return {str(stage): {"metrics": self.cleaned_data[f"{stage}_metrics"],
                             "regression_tolerance": self.cleaned_data[f"{stage}_tolerance"]} for stage in GATED_STAGES}

    def approvals(self):
        return {str(stage): self.cleaned_data[f"{stage}_approvals"] for stage in (*GATED_STAGES, Stage.ARCHIVED)}
