from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "lifecycle.registry"
    label = "registry"
