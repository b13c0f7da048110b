import json

from django import template
from django.core.serializers.json import DjangoJSONEncoder

register = template.Library()


@register.filter
def as_json(value):
    """Compact JSON for display; the template's autoescaping still applies."""
    return json.dumps(value, cls=DjangoJSONEncoder, sort_keys=True, ensure_ascii=False)


@register.filter
def as_pretty_json(value):
    """Indented JSON, for the unfolded view of a payload."""
    return json.dumps(value, cls=DjangoJSONEncoder, sort_keys=True, ensure_ascii=False, indent=2)


@register.filter
def get_item(mapping, key):
    """mapping[key] in a template, or nothing when absent."""
    return (mapping or {}).get(key, [])
