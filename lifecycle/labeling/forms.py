from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef

from lifecycle.datasets.models import Dataset, DatasetVersion
from lifecycle.labeling.models import MAX_LABELS, Assignment, LabelingProject
from lifecycle.lib.params import MAX_ID

VERSION_CHOICES_CAP = 200
NOTE_MAX = 2000
SHOW_CHOICES = [("", "all examples"), ("disagreements", "disagreements"), ("flagged", "flagged"), ("ties", "ties"),
                ("gold_failures", "gold failures"), ("low_confidence", "low model confidence"),
                ("decided", "adjudicated")]


def labelable_versions():
    return (DatasetVersion.objects.for_listing().select_related("dataset")
            .filter(dataset__task=Dataset.Task.CLASSIFICATION).order_by("-created_at", "-pk")[:VERSION_CHOICES_CAP])


class ProjectForm(forms.ModelForm):
    version = forms.ModelChoiceField(queryset=DatasetVersion.objects.none(), label="Dataset version")
    labels = forms.CharField(required=False, label="Label set",
                             help_text="Comma-separated, in the order of their keys (1–9, 0, then letters). "
                                       "Empty: the version's whole label set.")

    class Meta:
        model = LabelingProject
        fields = ["name", "version", "instructions", "overlap", "gold_share", "seed", "min_gold_accuracy",
                  "min_kappa", "min_alpha", "min_label_agreement", "min_gold_answers", "low_confidence"]
        labels = {"overlap": "Annotators per example", "gold_share": "Share of gold examples",
                  "min_gold_accuracy": "Lowest gold accuracy", "min_kappa": "Lowest kappa with the others",
                  "min_alpha": "Lowest Krippendorff's alpha", "min_label_agreement": "Lowest agreement on a label",
                  "min_gold_answers": "Gold answers before judging an annotator",
                  "low_confidence": "Model confidence counted as low"}
        help_texts = {"overlap": "1 to 5; nobody sees the same example twice.",
                      "gold_share": "0 to 0.5: examples whose version label is the known answer, mixed in unseen."}
        widgets = {"instructions": forms.Textarea(attrs={"rows": 5})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"].queryset = DatasetVersion.objects.filter(pk__in=[v.pk for v in labelable_versions()]) \
            .select_related("dataset")
        self.fields["version"].label_from_instance = lambda v: f"{v.dataset.slug} v{v.number} ({v.row_count} rows)"

    def clean(self):
        cleaned = super().clean()
        version = cleaned.get("version")
        if version is None:
            return cleaned
        raw = cleaned.get("labels") or ""
        labels = [label.strip() for label in raw.split(",") if label.strip()] or list(version.label_set)
        if len(set(labels)) != len(labels):
            self.add_error("labels", "A label appears twice.")
        problems = LabelingProject.problems_with(version, labels)
        if problems:
            self.add_error("labels" if raw else "version", " ".join(problems))
        cleaned["label_set"] = labels[:MAX_LABELS]
        return cleaned


class AnswerForm(forms.Form):
    """A labeler's answer: a label, or a flag (with an optional note)."""

    item = forms.IntegerField(min_value=1, max_value=MAX_ID)
    label = forms.CharField(required=False, max_length=200)
    flag = forms.BooleanField(required=False)
    note = forms.CharField(required=False, max_length=NOTE_MAX)

    def __init__(self, *args, label_set=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.label_set = label_set

    def clean(self):
        cleaned = super().clean()
        label, flag = cleaned.get("label", ""), cleaned.get("flag")
        if not label and not flag:
            raise forms.ValidationError("Send a label or a flag.")
        if label and label not in self.label_set:
            self.add_error("label", f"{label!r} is not in this project's label set.")
        return cleaned


class ItemForm(forms.Form):
    item = forms.IntegerField(min_value=1, max_value=MAX_ID)


class DecisionForm(forms.Form):
    label = forms.CharField(max_length=200)
    note = forms.CharField(required=False, max_length=NOTE_MAX)


class SuggestForm(forms.Form):
    run = forms.ModelChoiceField(queryset=None, label="Suggest labels from run")

    def __init__(self, *args, project, **kwargs):
        from lifecycle.runs.models import Run

        super().__init__(*args, **kwargs)
        runs = (Run.objects.filter(dataset_version__dataset=project.version.dataset_id, task="classification")
                .exclude(output_sha256="").select_related("dataset_version__dataset").order_by("-pk")[:50])
        self.fields["run"].queryset = Run.objects.filter(pk__in=[r.pk for r in runs]).select_related("dataset_version__dataset")
        self.fields["run"].label_from_instance = lambda r: f"#{r.pk} {r.name} ({r.dataset_version})"


class FreezeForm(forms.Form):
    override_reason = forms.CharField(required=False, max_length=NOTE_MAX, widget=forms.Textarea(attrs={"rows": 3}),
                                      label="Override reason (approvers only)")


class TableFilterForm(forms.Form):
    show = forms.ChoiceField(choices=SHOW_CHOICES, required=False)
    annotator = forms.ModelChoiceField(queryset=get_user_model().objects.none(), required=False,
                                       to_field_name="username")

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        # One index probe per user (EXISTS), not a DISTINCT over every assignment of the project.
        answered = Assignment.objects.filter(project=project, annotator=OuterRef("pk"))
        self.fields["annotator"].queryset = get_user_model().objects.filter(Exists(answered)).order_by("username")
