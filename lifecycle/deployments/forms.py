"""Forms of the deployment pages. They clean what a person typed; the model methods decide what
the deployment's state allows (and say why in a DeploymentError, which the views put on the form)."""
from django import forms
from django.core.exceptions import ValidationError

from lifecycle.deployments.models import NAME_VALIDATOR, SERVABLE_STAGES, Deployment, Release, Route
from lifecycle.registry.models import ModelVersion, RegisteredModel

TEXT_LIMIT = 2000  # reasons and notes
SHARE_MESSAGE = "The canary's share is a number of percent, 0 to 100."
# Addresses of the section's own pages: a deployment may not take one of these names.
RESERVED_NAMES = {"new", "tokens", "feedback"}


def _textarea(rows=3, **attrs):
    return forms.Textarea(attrs={"rows": rows, **attrs})


def servable_versions():
    """Versions that may serve: staging or production, with a valid signature."""
    return (ModelVersion.objects.filter(stage__in=SERVABLE_STAGES, signature_status=ModelVersion.Signature.VALID)
            .select_related("model").order_by("model__name", "-number"))


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, version):
        return f"{version.model.name} v{version.number} ({version.stage})"


def _share_field(**kwargs):
    return forms.FloatField(min_value=0, max_value=100, label="Share of live traffic (%)",
                            error_messages={"min_value": SHARE_MESSAGE, "max_value": SHARE_MESSAGE,
                                            "invalid": SHARE_MESSAGE, "required": SHARE_MESSAGE}, **kwargs)


class DeploymentForm(forms.Form):
    name = forms.CharField(max_length=63, validators=[NAME_VALIDATOR],
                           help_text="Lower-case letters, digits and hyphens; clients call /v1/deployments/<name>/predict.")
    environment = forms.CharField(max_length=40, initial="production")
    description = forms.CharField(max_length=5000, required=False, widget=_textarea(3))
    model = forms.ModelChoiceField(queryset=RegisteredModel.objects.order_by("name"), to_field_name="slug",
                                   empty_label="— choose —")
    stable = VersionChoiceField(queryset=servable_versions(), label="Stable version", empty_label="— choose —",
                                help_text="Only staging or production versions whose signature is valid can serve.",
                                error_messages={"invalid_choice": "Choose a staging or production version with a "
                                                                  "valid signature; that one is not."})

    def clean_name(self):
        name = self.cleaned_data["name"]
        if name in RESERVED_NAMES:
            raise ValidationError(f"“{name}” is the address of one of this section's pages; choose another name.")
        if Deployment.objects.filter(name=name).exists():
            raise ValidationError(f"A deployment named {name} exists already.")
        return name

    def clean(self):
        data = super().clean()
        model, stable = data.get("model"), data.get("stable")
        if model and stable and stable.model_id != model.pk:
            self.add_error("stable", f"{stable} is a version of {stable.model.name}, not of {model.name}.")
        return data


class ReleaseForm(forms.Form):
    """A candidate beside the current stable version, as a canary or a shadow."""

    candidate = VersionChoiceField(queryset=ModelVersion.objects.none(), empty_label="— choose —")
    mode = forms.ChoiceField(choices=[(Release.Mode.CANARY, "canary: a share of live traffic"),
                                      (Release.Mode.SHADOW, "shadow: a copy of every request, answers logged only")])
    share = _share_field(required=False, initial=10,
                         help_text="Canary only. Raising it later keeps every sticky key already on the candidate there.")
    reason = forms.CharField(max_length=TEXT_LIMIT, required=False, widget=_textarea(2), label="Why")

    def __init__(self, *args, deployment, **kwargs):
        super().__init__(*args, **kwargs)
        model = deployment.model
        field = self.fields["candidate"]
        field.queryset = servable_versions().filter(model=model).exclude(pk=deployment.current_release.stable_id)
        field.error_messages["invalid_choice"] = (f"Choose one of {model.name}'s staging or production versions "
                                                  "with a valid signature (not the stable one); that one is not.")

    def clean(self):
        data = super().clean()
        if data.get("mode") == Release.Mode.CANARY and data.get("share") is None and "share" not in self.errors:
            self.add_error("share", SHARE_MESSAGE)
        if data.get("mode") == Release.Mode.SHADOW:
            data["share"] = 0.0
        return data


class ShareForm(forms.Form):
    share = _share_field()
    reason = forms.CharField(max_length=TEXT_LIMIT, required=False, widget=_textarea(2), label="Why")


class PromoteForm(forms.Form):
    reason = forms.CharField(max_length=TEXT_LIMIT, widget=_textarea(2), label="Why",
                             help_text="The registry's approvers read this with the evidence.")


class RollbackForm(forms.Form):
    reason = forms.CharField(max_length=TEXT_LIMIT, widget=_textarea(3, autofocus=True), label="Why roll back",
                             error_messages={"required": "Say why you roll back; the reason goes into the audit trail."},
                             help_text="Goes into the audit trail with your name.")


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Who or what uses it, e.g. “ticket router (prod)”.")
    deployments = forms.ModelMultipleChoiceField(queryset=Deployment.objects.order_by("name"), to_field_name="name",
                                                 widget=forms.CheckboxSelectMultiple,
                                                 error_messages={"required": "A serving token names at least one deployment."})
    rate_per_second = forms.FloatField(min_value=0.1, max_value=100_000, initial=100.0, label="Requests per second")
    burst = forms.IntegerField(min_value=1, max_value=1_000_000, initial=200,
                               help_text="Requests allowed at once above the rate, before 429s.")


class ReviewFilterForm(forms.Form):
    """The feedback review page's filters (GET)."""

    deployment = forms.ModelChoiceField(queryset=Deployment.objects.order_by("name"), to_field_name="name",
                                        required=False, empty_label="all")
    route = forms.ChoiceField(choices=[("", "stable and canary"), (Route.STABLE, "stable"), (Route.CANARY, "canary")],
                              required=False)
    label = forms.CharField(max_length=200, required=False)
    confidence_min = forms.FloatField(min_value=0, max_value=1, required=False, label="Confidence from")
    confidence_max = forms.FloatField(min_value=0, max_value=1, required=False, label="to")
    disagreeing = forms.BooleanField(required=False, label="Shadow disagrees")
    before = forms.IntegerField(min_value=1, required=False, widget=forms.HiddenInput)
    after = forms.IntegerField(min_value=1, required=False, widget=forms.HiddenInput)

    FILTERS = ("deployment", "route", "label", "confidence_min", "confidence_max", "disagreeing")

    def clean(self):
        data = super().clean()
        low, high = data.get("confidence_min"), data.get("confidence_max")
        if low is not None and high is not None and low > high:
            self.add_error("confidence_max", "The upper bound is below the lower one.")
        return data


class FeedbackForm(forms.Form):
    """One correction from the review page: the right label, or "the answer is right"."""

    request_id = forms.UUIDField(widget=forms.HiddenInput)
    position = forms.IntegerField(min_value=0, max_value=100_000, widget=forms.HiddenInput)
    label = forms.CharField(max_length=200, required=False)
    verdict = forms.ChoiceField(choices=[("", ""), ("right", "the answer is right"), ("wrong", "the answer is wrong")],
                                required=False)
    note = forms.CharField(max_length=TEXT_LIMIT, required=False)
    back = forms.CharField(max_length=2000, required=False, widget=forms.HiddenInput)

    def clean(self):
        data = super().clean()
        if not data.get("label") and not data.get("verdict") and not self.errors:
            raise ValidationError("Choose the right label, or say whether the answer is right.")
        return data

    def correct(self):
        """What Feedback.give takes as `correct`: None when a label says it."""
        verdict = self.cleaned_data["verdict"]
        return None if self.cleaned_data["label"] or not verdict else verdict == "right"


class ShadowPageForm(forms.Form):
    """A flip to list the examples of (both labels, or neither), and the page's keys."""

    live = forms.CharField(max_length=200, required=False)
    shadow = forms.CharField(max_length=200, required=False)
    before = forms.IntegerField(min_value=1, required=False)
    after = forms.IntegerField(min_value=1, required=False)

    def clean(self):
        data = super().clean()
        if bool(data.get("live")) != bool(data.get("shadow")):
            raise ValidationError("A flip names both labels: the live one and the shadow's.")
        return data
