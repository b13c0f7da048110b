from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "lifecycle.datasets"
    label = "datasets"
