from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "lifecycle.monitoring"
    label = "monitoring"
    verbose_name = "Monitoring"

    def ready(self):
        # Receivers (a released version gets its reference) and the registry gate (the
        # error-budget policy) register on import.
        from lifecycle.monitoring import policy, signals  # noqa: F401
