"""System checks for the serving settings: refuse at start-up what would fail every request."""
from django.conf import settings
from django.core.checks import Error, register

TAG = "lifecycle"


@register(TAG)
def check_serving_limits(app_configs, **kwargs):
    errors = []
    if settings.SERVING_MAX_INPUTS > settings.SERVING_MAX_QUEUE:
        # A request with the most inputs allowed could never fit the batch queue: always 503.
        errors.append(Error(f"SERVING_MAX_INPUTS ({settings.SERVING_MAX_INPUTS}) must not exceed SERVING_MAX_QUEUE "
                            f"({settings.SERVING_MAX_QUEUE})", id="lifecycle.E020"))
    for name in ("SERVING_MAX_BATCH", "SERVING_MAX_QUEUE", "SERVING_MAX_INPUTS", "SERVING_MAX_INPUT_CHARS"):
        if getattr(settings, name) < 1:
            errors.append(Error(f"{name} must be at least 1", id="lifecycle.E021"))
    if settings.SERVING_ROUTES_REFRESH_SECONDS <= 0:
        errors.append(Error("SERVING_ROUTES_REFRESH_SECONDS must be more than 0", id="lifecycle.E022"))
    return errors
