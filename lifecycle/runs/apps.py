from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "lifecycle.runs"
    label = "runs"
