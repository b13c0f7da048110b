from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.utils.text import slugify

from lifecycle.datasets.models import Dataset, Example, Upload
from lifecycle.datasets.splits import KEEP_TOGETHER, SplitOptions
from lifecycle.lib.params import MAX_ID

TARGETS = {
    Dataset.Task.CLASSIFICATION: (("text", True), ("label", True)),
    Dataset.Task.SFT: (("prompt", True), ("response", True), ("label", False)),
}
OPTIONAL_TARGETS = (("group", "Group (e.g. a customer id; never split across train/test)"),
                    ("timestamp", "Timestamp"), ("split", "Split (train/validation/test) given by the file"))


class DatasetForm(forms.ModelForm):
    labels = forms.CharField(required=False, help_text="Optional: the allowed labels, comma-separated. "
                             "Empty: the first version's labels become the label set.")

    class Meta:
        model = Dataset
        fields = ["name", "slug", "description", "task", "pii_policy", "max_labels", "max_text_chars"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3}),
                   # dataset-form.js fills the slug from the name until the slug is edited.
                   "name": forms.TextInput(attrs={"data-slug-source": "id_slug"})}
        labels = {"pii_policy": "PII policy", "max_labels": "Most labels", "max_text_chars": "Longest text (characters)"}
        help_texts = {"slug": "The dataset's name in addresses: lowercase letters, digits and hyphens. "
                              "Filled from the name; change it if you like."}
        error_messages = {"slug": {"unique": "A dataset with this slug exists already: give another."}}

    @classmethod
    def from_values(cls, values):
        """The form bound to what a script sent (manage.py dataset_create, the JSON API): a
        field it leaves out takes the default the web form starts with."""
        data = {name: field.initial for name, field in cls.base_fields.items() if field.initial is not None}
        return cls({**data, **values})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["slug"].required = False  # empty: made from the name, as the page's script does

    def clean(self):
        data = super().clean()
        if not data.get("slug") and "slug" not in self.errors and data.get("name"):
            data["slug"] = slugify(data["name"])[:80]
            if not data["slug"]:
                self.add_error("slug", "Give a slug: the name has no letters or digits to make one from.")
            elif Dataset.objects.filter(slug=data["slug"]).exists():
                self.add_error("slug", f"A dataset with the slug “{data['slug']}” exists already: give another.")
        elif not data.get("slug") and "slug" not in self.errors:
            self.add_error("slug", "This field is required.")
        return data

    def clean_labels(self):
        labels = [label.strip() for label in self.cleaned_data["labels"].split(",") if label.strip()]
        if len(set(labels)) != len(labels):
            raise ValidationError("Each label may appear once.")
        if labels and len(labels) < 2:
            raise ValidationError("A label set needs at least two labels.")
        return labels

    def error_line(self):
        """Every error in one line, each named by its field, for a command line or an API answer."""
        parts = []
        for name, errors in self.errors.items():
            text = " ".join(errors)
            choices = [str(value) for value, _ in getattr(self.fields.get(name), "choices", ()) if value != ""]
            if choices:
                text = f"{text.rstrip('.')} (one of: {', '.join(choices)})."
            parts.append(text if name == NON_FIELD_ERRORS else f"{name}: {text}")
        return "; ".join(parts)

    def save_for(self, user):
        fields = {name: self.cleaned_data[name] for name in self.Meta.fields}
        return Dataset.create(user, label_set=self.cleaned_data["labels"], **fields)


class PolicyForm(forms.Form):
    pii_policy = forms.ChoiceField(choices=Dataset.PiiPolicy.choices)


class UploadForm(forms.Form):
    file = forms.FileField(help_text="CSV (any common dialect), JSONL or Parquet, UTF-8.")
    on_error = forms.ChoiceField(choices=Upload.OnError.choices, initial=Upload.OnError.REJECT, widget=forms.RadioSelect)


class MappingForm(forms.Form):
    """One select per field Lifecycle needs, offering the file's columns."""

    def __init__(self, *args, dataset, columns, initial_mapping=None, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [("", "— none —")] + [(column, column) for column in columns]
        initial_mapping = initial_mapping or {}
        for target, required in TARGETS[dataset.task]:
            self.fields[target] = forms.ChoiceField(choices=choices, required=required, initial=initial_mapping.get(target, ""),
                                                    label=f"{target.capitalize()} column")
        for target, label in OPTIONAL_TARGETS:
            self.fields[target] = forms.ChoiceField(choices=choices, required=False, initial=initial_mapping.get(target, ""), label=label)

        self.fields["split_by_time"] = forms.BooleanField(
            required=False, label="Split by time: train before validation before test (needs the timestamp column)")

    def clean(self):
        data = super().clean()
        chosen = [value for key, value in data.items() if value and key != "split_by_time"]
        if len(chosen) != len(set(chosen)):
            raise ValidationError("Each column can feed only one field.")
        if data.get("split_by_time") and not data.get("timestamp"):
            raise ValidationError("Splitting by time needs the timestamp column.")
        if data.get("split_by_time") and data.get("split"):
            raise ValidationError("The file gives its own splits: splitting by time would ignore them.")
        return data

    def mapping(self):
        return {target: column for target, column in self.cleaned_data.items() if column and target != "split_by_time"}


class BrowseForm(forms.Form):
    SPLITS = [("", "all splits")] + [(str(value), name) for value, name in Example.SPLIT_CHOICES]
    PII = [("", "any"), ("yes", "with PII"), ("no", "without PII")]

    q = forms.CharField(required=False, max_length=200, label="Search words")
    split = forms.ChoiceField(choices=SPLITS, required=False)
    label = forms.CharField(required=False, max_length=200)
    pii = forms.ChoiceField(choices=PII, required=False, label="PII")
    after = forms.IntegerField(required=False, min_value=-1, max_value=MAX_ID, widget=forms.HiddenInput)
    before = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID, widget=forms.HiddenInput)

    def filters(self):
        data = self.cleaned_data
        return {
            "split": int(data["split"]) if data.get("split") else None,
            "label": data.get("label") or None,
            "pii": {"yes": True, "no": False}.get(data.get("pii") or ""),
            "search": (data.get("q") or "").strip(),
        }


class SignOffForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), min_length=10,
                             help_text="Why this PII may stay (recorded in the audit trail).")


class ResplitForm(forms.Form):
    """Split a version again: another seed, less kept together, or a column of the data."""

    seed = forms.IntegerField(min_value=0, max_value=2**31 - 1, initial=1)
    keep_together = forms.ChoiceField(choices=list(KEEP_TOGETHER.items()), initial="all", required=False,
                                      label="Keep together")
    column = forms.ChoiceField(required=False, label="Or take the splits from the column")

    def __init__(self, *args, version, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["column"].choices = [("", "— none: split by seed —")] + [(c, c) for c in version.split_columns()]

    def error_text(self):
        if "seed" in self.errors:
            return "The seed must be a whole number from 0 to 2147483647."
        if "column" in self.errors:
            return "That column does not give splits in this version: choose one of the columns offered."
        return "Choose what to keep together from the options offered."

    def options(self):
        data = self.cleaned_data
        return SplitOptions(seed=data["seed"], keep_together=data.get("keep_together") or "all", column=data.get("column") or "")
