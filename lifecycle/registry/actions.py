"""The registry's actions on a run's page (runs/actions.py): register a succeeded run's
output as a model version, or, once it is registered, go to its versions."""
from django.urls import reverse
from django.utils.http import urlencode

from lifecycle.core.models import Job
from lifecycle.core.roles import ML_ENGINEER, has_role
from lifecycle.registry.models import ModelVersion
from lifecycle.runs.actions import run_action


@run_action
def registry_actions(run, user):
    versions = ModelVersion.objects.filter(run=run).select_related("model").order_by("model__name", "number")
    found = [(f"Registered as {version}", version.get_absolute_url()) for version in versions]
    if found:
        return found
    if has_role(user, ML_ENGINEER) and run.status == Job.Status.SUCCEEDED and run.output_sha256:
        return [("Register as a model version", f"{reverse('registry:register')}?{urlencode({'run': run.pk})}")]
    return []
