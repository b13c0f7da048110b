from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "lifecycle.labeling"
    label = "labeling"
