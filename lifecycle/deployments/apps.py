from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "lifecycle.deployments"
    label = "deployments"
