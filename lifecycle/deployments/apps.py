from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "lifecycle.deployments"
    label = "deployments"

    def ready(self):
        # Maintenance steps (verdicts, rollbacks waiting on a dead process, retention) and the
        # receiver that finishes a release's promotion when the registry decides it.
        from lifecycle.deployments import checks, lineage, signals, tasks  # noqa: F401
        from lifecycle.registry.models import registry_event

        registry_event.connect(signals.registry_event, dispatch_uid="deployments.registry_event")
