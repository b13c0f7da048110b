"""The registry says what happened to a promotion; a release waiting on it follows. The
registry never imports deployments: this receiver is connected in DeploymentsConfig.ready."""
from django.contrib.auth import get_user_model
from django.db import transaction


def _follow(release_ids, user):
    from lifecycle.deployments.models import Release

    for release in Release.objects.filter(pk__in=release_ids, status=Release.Status.PROMOTING):
        release.complete_promotion(user)


def registry_event(sender, event, obj, data, **kwargs):
    from lifecycle.deployments.models import Release

    if event == "stage.changed" and data.get("to") == "production":
        releases = Release.objects.filter(candidate=obj, status=Release.Status.PROMOTING)
    elif event == "promotion.rejected":
        releases = Release.objects.filter(promotion_request=obj, status=Release.Status.PROMOTING)
    else:
        return
    ids = list(releases.values_list("pk", flat=True))
    user = get_user_model().objects.filter(username=data.get("by")).first() if data.get("by") else None
    if ids:
        transaction.on_commit(lambda: _follow(ids, user))
