from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "lifecycle.registry"
    label = "registry"

    def ready(self):
        from lifecycle.registry import tasks  # noqa: F401 (the webhook retry dispatcher, a maintenance step)
