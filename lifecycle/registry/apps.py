from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "lifecycle.registry"
    label = "registry"

    def ready(self):
        # The webhook retry dispatcher (a maintenance step) and the run page's Register action.
        from lifecycle.registry import actions, tasks  # noqa: F401
