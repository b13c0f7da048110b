from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "lifecycle.monitoring"
    label = "monitoring"
