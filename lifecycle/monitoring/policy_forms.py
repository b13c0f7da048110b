"""Forms of the incident and retrain pages. They clean what a person typed; incidents.py and
retrain.py decide what the current state allows (MonitoringError, put on the form by the view)."""
from datetime import timedelta

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from lifecycle.deployments.models import Deployment
from lifecycle.monitoring import incidents
from lifecycle.monitoring.models import MonitoringError, RetrainRule

TEXT_LIMIT = 2000
WINDOW_FORMAT = "%Y-%m-%dT%H:%M"


def _reason(label, required_message):
    return forms.CharField(max_length=TEXT_LIMIT, label=label, widget=forms.Textarea(attrs={"rows": 3}),
                           error_messages={"required": required_message})


def _moment(label):
    return forms.DateTimeField(label=label, input_formats=[WINDOW_FORMAT, "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"],
                               widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=WINDOW_FORMAT),
                               error_messages={"required": "Give a date and time (UTC).",
                                               "invalid": "Write a date and time as YYYY-MM-DD HH:MM (UTC)."})


class IncidentOpenForm(forms.Form):
    """Incident mode for one model: what is wrong, and the window of answers that failed."""

    deployment = forms.ModelChoiceField(queryset=Deployment.objects.none(), required=False, to_field_name="name",
                                        empty_label=None, label="Deployment whose inputs to capture")
    reason = _reason("What is wrong", "Say what is wrong: opening incident mode needs a reason.")
    window_start = _moment("Failing window from (UTC)")
    window_end = _moment("to (UTC)")

    def __init__(self, *args, model, now=None, **kwargs):
        now = (now or timezone.now()).replace(second=0, microsecond=0)
        kwargs.setdefault("initial", {"window_start": now - timedelta(hours=1), "window_end": now})
        super().__init__(*args, **kwargs)
        self.fields["deployment"].queryset = Deployment.objects.filter(model=model).order_by("name")

    def clean(self):
        data = super().clean()
        start, end = data.get("window_start"), data.get("window_end")
        if start and end:
            try:
                incidents.check_window(start, end)
            except MonitoringError as exc:
                raise ValidationError(str(exc)) from None
        return data


class LiftForm(forms.Form):
    reason = _reason("Why it is over", "Say why it is over: lifting incident mode needs a reason.")


class DismissForm(forms.Form):
    reason = _reason("Why dismiss it", "Say why: dismissing a draft needs a reason.")


class RuleForm(forms.Form):
    kind = forms.ChoiceField(choices=RetrainRule.Kind.choices, label="Trigger")
    consecutive = forms.IntegerField(min_value=1, max_value=100, initial=3, label="Consecutive drifted checks (drift)",
                                     error_messages={"min_value": "At least 1 check.", "max_value": "At most 100 checks."})
    min_feedback = forms.IntegerField(min_value=1, max_value=10_000_000, initial=100,
                                      label="Feedback needed (feedback)",
                                      error_messages={"min_value": "At least 1 piece of feedback."})
    enabled = forms.BooleanField(required=False, initial=True)


class RuleToggleForm(forms.Form):
    kind = forms.ChoiceField(choices=RetrainRule.Kind.choices)
    enabled = forms.TypedChoiceField(choices=[("1", "on"), ("0", "off")], coerce=lambda v: v == "1")
