from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "lifecycle.labeling"
    label = "labeling"

    def ready(self):
        from lifecycle.labeling import lineage, tasks  # noqa: F401 (the claim-expiry step; the lineage source)
