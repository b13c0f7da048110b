"""Receivers: a version released by a deployment gets its reference statistics computed once.

Deployments never import monitoring; this module (imported by MonitoringConfig.ready) follows
the deployments' own rows instead."""
import logging

from django.db.models.signals import post_save
from django.dispatch import receiver

from lifecycle.core.queues import QueueUnavailable
from lifecycle.deployments.models import Release
from lifecycle.monitoring.reference import ensure_reference

log = logging.getLogger(__name__)


@receiver(post_save, sender=Release, dispatch_uid="monitoring.release_references")
def release_made(sender, instance, created, raw=False, **kwargs):
    """A new release's stable and candidate each get a reference (sent once its transaction
    commits). A release must not fail because Redis is down: the reference is then sent by
    the maintenance pass (reference.send_missing) once Redis is back."""
    if not created or raw:
        return
    for version_id in dict.fromkeys(v for v in (instance.stable_id, instance.candidate_id) if v):
        try:
            ensure_reference(version_id, user=instance.created_by)
        except QueueUnavailable as exc:
            log.warning("the reference of version %s waits for the job queue: %s", version_id, exc)
