from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "lifecycle.registry"
    label = "registry"

    def ready(self):
        from lifecycle.registry import actions  # noqa: F401 (the run page's Register action)
