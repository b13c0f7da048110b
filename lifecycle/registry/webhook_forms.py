from django import forms

from lifecycle.lib import outbound
from lifecycle.lib.params import MAX_ID
from lifecycle.registry.models import WEBHOOK_EVENTS, Webhook


class WebhookForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What receives it, e.g. “deploy bot”.")
    # A CharField, not a URLField: URLField adds "http://" to what lacks a scheme and applies
    # its own rules; lib/outbound.py is the one judge of where Lifecycle may send.
    url = forms.CharField(label="URL", max_length=outbound.MAX_URL_LENGTH,
                          help_text="An https URL on a public address (plain http only while DEBUG is on).")
    events = forms.MultipleChoiceField(choices=[(event, event) for event in WEBHOOK_EVENTS],
                                       widget=forms.CheckboxSelectMultiple, help_text="Send these events.")

    def clean_url(self):
        url = self.cleaned_data["url"]
        try:
            outbound.check_url(url)
        except outbound.Refused as exc:
            raise forms.ValidationError(str(exc)) from None
        return url

    def save(self, user):
        return Webhook.create(user, **self.cleaned_data)


class DeliveryPageForm(forms.Form):
    """?before= / ?after=: the delivery ids that bound a page of the webhook's log."""

    before = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    after = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID)
