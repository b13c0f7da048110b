from lifecycle.core.jobs import Outcome, task
from lifecycle.core.roles import READ_ROLES


def _demo_outcome(job):
    from lifecycle.registry.models import ModelVersion

    version = ModelVersion.objects.filter(pk=(job.result or {}).get("version")).select_related("model").first()
    if version is None:
        return Outcome("Queued the demo version's registration.", ())
    return Outcome(f"Registered {version} and asked for staging.", ((str(version), version.get_absolute_url()),))


@task(queue="default", roles=READ_ROLES, outcome=_demo_outcome)
def queue_demo_registration(job):
    """Queue the demo registration behind the demo run's training (registry/demo.py)."""
    from lifecycle.registry import demo

    return {"job": demo.queue_registration().pk}


@task(queue="training", roles=READ_ROLES, outcome=_demo_outcome)
def register_demo_version(job):
    """Register the trained demo run and request staging (registry/demo.py)."""
    from lifecycle.registry import demo

    return {"version": demo.register().pk}
