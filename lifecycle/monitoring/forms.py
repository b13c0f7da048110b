"""Forms of the SLO and alert pages. They clean what a person typed; slo.py and alerts.py
decide what the state allows (and say why in a MonitoringError, which the views put on the form)."""
from django import forms
from django.core.exceptions import ValidationError

from lifecycle.lib.params import MAX_ID
from lifecycle.monitoring.features import LATENCY_EDGES_MS
from lifecycle.monitoring.models import SLO, Alert, default_burn_windows

REASON_LIMIT = 2000
EDGES_TEXT = ", ".join(f"{edge:g}" for edge in LATENCY_EDGES_MS)
TARGET_MESSAGE = "The target is a percentage of good events, above 0 and below 100 (e.g. 99.9)."


def _textarea(rows=3, **attrs):
    return forms.Textarea(attrs={"rows": rows, **attrs})


def windows_text(windows):
    return "\n".join(f"{w['severity']} {w['long_minutes']} {w['short_minutes']} {w['factor']:g}" for w in windows)


def parse_windows(text):
    """One burn window a line: severity, long minutes, short minutes, factor ("page 60 5 14.4")."""
    windows = []
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            severity, long_minutes, short_minutes, factor = parts[0], int(parts[1]), int(parts[2]), float(parts[3])
        except (IndexError, ValueError):
            raise ValidationError(f"Line {number} is not “severity long-minutes short-minutes factor” "
                                  f"(e.g. “page 60 5 14.4”).") from None
        if len(parts) != 4 or severity not in ("page", "ticket") or factor != factor:
            raise ValidationError(f"Line {number}: the severity is page or ticket, then three numbers.")
        windows.append({"severity": severity, "long_minutes": long_minutes, "short_minutes": short_minutes,
                        "factor": factor})
    if not windows:
        raise ValidationError("Give at least one burn window.")
    return windows


class SLOFieldsMixin(forms.Form):
    name = forms.CharField(max_length=100)
    target_percent = forms.FloatField(label="Target (%)", min_value=0.001, max_value=99.999,
                                      error_messages={k: TARGET_MESSAGE for k in ("min_value", "max_value", "invalid",
                                                                                   "required")})
    threshold_ms = forms.FloatField(label="Latency threshold (ms)", required=False,
                                    help_text=f"Latency SLOs only: one of the histogram's edges: {EDGES_TEXT}.")
    window_days = forms.IntegerField(label="Window (days)", min_value=1, max_value=366, initial=30)
    burn_windows = forms.CharField(widget=_textarea(4), initial=windows_text(default_burn_windows()),
                                   help_text="One a line: severity, long window (min), short window (min), burn factor. "
                                             "An alert fires when both windows burn faster than the factor.")

    def clean_burn_windows(self):
        return parse_windows(self.cleaned_data["burn_windows"])

    def check_threshold(self, kind):
        threshold = self.cleaned_data.get("threshold_ms")
        if kind != SLO.Kind.LATENCY:
            self.cleaned_data["threshold_ms"] = None
        elif threshold is None:
            self.add_error("threshold_ms", f"A latency SLO needs a threshold: one of {EDGES_TEXT} ms.")
        elif threshold not in LATENCY_EDGES_MS:
            self.add_error("threshold_ms", f"{threshold:g} ms is not an edge of the latency histogram, so the share "
                                           f"under it cannot be counted exactly; choose one of {EDGES_TEXT} ms.")

    def fields_for_slo(self):
        data = self.cleaned_data
        return {"name": data["name"].strip(), "target": round(data["target_percent"] / 100, 8),
                "threshold_ms": data["threshold_ms"], "window_days": data["window_days"],
                "burn_windows": data["burn_windows"]}


class SLOForm(SLOFieldsMixin):
    field_order = ["name", "kind", "target_percent", "threshold_ms", "window_days", "burn_windows"]
    kind = forms.ChoiceField(choices=SLO.Kind.choices, label="SLI")

    def clean(self):
        data = super().clean()
        if "kind" in data:
            self.check_threshold(data["kind"])
        return data


class SLOEditForm(SLOFieldsMixin):
    enabled = forms.BooleanField(required=False, initial=True, help_text="Off: not evaluated and never alerts.")

    def __init__(self, *args, slo, **kwargs):
        self.slo = slo
        if not args or args[0] is None:
            kwargs.setdefault("initial", {"name": slo.name, "target_percent": round(slo.target * 100, 6),
                                          "threshold_ms": slo.threshold_ms, "window_days": slo.window_days,
                                          "burn_windows": windows_text(slo.burn_windows), "enabled": slo.enabled})
        super().__init__(*args, **kwargs)
        if slo.kind != SLO.Kind.LATENCY:
            del self.fields["threshold_ms"]

    def clean(self):
        data = super().clean()
        self.check_threshold(self.slo.kind)
        return data


class SilenceForm(forms.Form):
    kind = forms.ChoiceField(choices=[("", "every kind"), *Alert.Kind.choices], required=False,
                             label="Alerts of kind")
    ends_at = forms.DateTimeField(label="Ends at (UTC)", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
                                  input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"],
                                  error_messages={"required": "Say when the silence ends.",
                                                  "invalid": "Give the end as a date and time, e.g. 2025-06-01 14:30."})
    reason = forms.CharField(max_length=REASON_LIMIT, widget=_textarea(2),
                             error_messages={"required": "Say why the alerts are silenced (what is being worked on)."})


class ResolveForm(forms.Form):
    reason = forms.CharField(max_length=REASON_LIMIT, widget=_textarea(2),
                             error_messages={"required": "Say why the alert is resolved (what was done or found)."})


class AlertFilterForm(forms.Form):
    """?status= &severity= &deployment= and the keyset page bounds of the alerts list."""

    STATUSES = [("open", "open (firing or acknowledged)"), *Alert.Status.choices, ("all", "all")]
    status = forms.ChoiceField(choices=STATUSES, required=False)
    severity = forms.ChoiceField(choices=[("", "any"), *Alert.Severity.choices], required=False)
    deployment = forms.CharField(max_length=63, required=False)
    before = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    after = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID)
