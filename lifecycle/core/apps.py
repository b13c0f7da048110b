from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "lifecycle.core"
    label = "core"

    def ready(self):
        from lifecycle.core import checks  # noqa: F401  (registers the system checks)
