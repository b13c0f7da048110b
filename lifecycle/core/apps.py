from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "lifecycle.core"
    label = "core"

    def ready(self):
        from lifecycle.core import checks  # noqa: F401  (registers the system checks)
        from lifecycle.core import login_throttle

        login_throttle.connect()  # audit events for login lockouts and unlocks
