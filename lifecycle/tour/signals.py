"""The demo's chapters after the labels: once the labeling demo has queued its freeze
(labeling/demo.py sends `freeze_requested`, from inside its default-queue job), the fine-tune's
starter, the second labeling round, the registration and the deployment's chapter are queued
behind that freeze, in this order, so each finds what it needs done when the demo's worker gets
to it. Keys make each one once: a second start (or a retried labeling job) queues nothing new."""
from django.dispatch import receiver

from lifecycle.deployments import demo as deployments_demo
from lifecycle.labeling import demo as labeling_demo
from lifecycle.registry import demo as registry_demo
from lifecycle.runs import demo as runs_demo


@receiver(labeling_demo.freeze_requested, dispatch_uid="tour.after_freeze")
def after_freeze(sender, project, **kwargs):
    from lifecycle.core.jobs import enqueue
    from lifecycle.labeling.tasks import seed_demo_round_two

    runs_demo.queue_start()
    enqueue(seed_demo_round_two, key="demo:labeling:round-2")
    registry_demo.queue_start()
    deployments_demo.queue_start()
