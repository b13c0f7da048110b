from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "lifecycle.monitoring"
    label = "monitoring"
    verbose_name = "Monitoring"

    def ready(self):
        # Receivers (a released version gets its reference), the registry gate (the
        # error-budget policy), and the maintenance steps and jobs register on import.
        from lifecycle.monitoring import policy, signals, tasks  # noqa: F401
