from django.apps import AppConfig


class TourConfig(AppConfig):
    """The demo's story as a whole: where it stands (the start page's panel) and the simulated
    traffic that drives its second half. It reads every other app; none reads it."""

    name = "lifecycle.tour"
    label = "tour"
    verbose_name = "Tour"

    def ready(self):
        from lifecycle.tour import signals  # noqa: F401  (the story's chapters after the labels' freeze)
