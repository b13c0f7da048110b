"""Lineage onward from a model version: the deployments whose releases served it (registered
with registry/lineage.py in DeploymentsConfig.ready, so the registry never imports us)."""
from django.db.models import Q

from lifecycle.registry import lineage


@lineage.downstream
def deployments_of(version):
    from lifecycle.deployments.models import Release

    releases = (Release.objects.filter(Q(stable=version) | Q(candidate=version)).select_related("deployment")
                .order_by("deployment__name", "number"))
    steps = {}
    for release in releases:
        role = "stable" if release.stable_id == version.pk else release.mode or "candidate"
        step = steps.setdefault(release.deployment_id, {
            "kind": "Deployment", "name": release.deployment.name, "url": release.deployment.get_absolute_url(),
            "roles": []})
        step["roles"].append(f"release {release.number} as {role} ({release.status.replace('_', ' ')})")
    return [{**step, "detail": "; ".join(step.pop("roles"))} for step in steps.values()]
