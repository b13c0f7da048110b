from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "lifecycle.labeling"
    label = "labeling"

    def ready(self):
        from lifecycle.labeling import tasks  # noqa: F401 (registers the claim-expiry maintenance step)
