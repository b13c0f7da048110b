from django import forms

from lifecycle.core.models import ApiToken
from lifecycle.lib.params import MAX_ID


class AuditFilterForm(forms.Form):
    object_type = forms.CharField(required=False, max_length=100)
    object_id = forms.CharField(required=False, max_length=100)
    actor = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=100)
    since = forms.DateTimeField(required=False, label="From", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, label="Until", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    before = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, widget=forms.HiddenInput)
    after = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID, widget=forms.HiddenInput)

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise forms.ValidationError("“From” must be before “Until”.")
        return data

    def filters(self):
        keys = ("object_type", "object_id", "actor", "action", "since", "until")
        return {key: self.cleaned_data.get(key) for key in keys}


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. “laptop CLI”.")

    def save(self, user):
        return ApiToken.issue(user, self.cleaned_data["name"])
