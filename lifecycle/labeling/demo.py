"""Demo labeling: a review project over the demo support-intents version, with answers already
given by the three demo labelers (mostly agreeing, some 2–1 disagreements, a few gold misses by
the careless one, one three-way tie and one flag waiting for adjudication), and QC computed.
Nobody looked at those examples, so their answer times are scripted too (each labeler's own
pace, the careless one fastest): QC's median time per answer reads like a real team's.

QC fails (the careless labeler's gold misses), so the demo approver overrides it in writing and
freezes the labels into a child version: the version the demo's fine-tune trains on. Then a
second round over the frozen version opens for the labelers, with model suggestions from the
demo run once it has trained.

It is made by a default-queue job queued after the demo dataset's ingest. The freeze is a job
of its own, queued from inside that one; the rest of the story must come after it, so this
module sends `freeze_requested` and the tour (tour/signals.py) queues the next chapters."""
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from lifecycle.core.jobs import enqueue
from lifecycle.labeling.models import Assignment, Item, LabelingProject

NAME = "Demo: support intents review"
ROUND_TWO = "Demo: support intents, round 2"
OVERRIDE = ("Demo: demo-labeler-3's gold misses are known; the labels the team agreed on are good enough "
            "for the first fine-tune, and the careless labeler's answers are reviewed in round 2.")
# Sent (with `project`) once the freeze is queued: what follows queues behind it (tour/signals.py).
freeze_requested = Signal()
INSTRUCTIONS = ("Pick the customer's main intent. If a message asks two things, pick what they want done first; "
                "if none fits or the text is unreadable, flag it (f) with a short note.")
LABELERS = ("demo-labeler", "demo-labeler-2", "demo-labeler-3")
# Examples each demo labeler has answered at the start (by queue position): demo-labeler has
# answered fewer, so each answer they give completes an example and moves the QC numbers.
ANSWERED = {"demo-labeler": 40, "demo-labeler-2": 80, "demo-labeler-3": 80}
TIE_AT, FLAG_AT = 7, 12  # non-gold examples (by order met) that end in a tie and a flag
PACE = {"demo-labeler": 7.0, "demo-labeler-2": 5.0, "demo-labeler-3": 2.5}  # seconds per example


def _think_seconds(username, n):
    """The scripted time a demo labeler took on their n-th example: half to one and a half
    times their pace, spread evenly."""
    return PACE[username] * (0.5 + (n * 7 % 11) / 10)


def seed(stdout):
    if LabelingProject.objects.filter(name=NAME).exists():
        return
    from lifecycle.labeling.tasks import seed_demo_project

    job = enqueue(seed_demo_project, key="demo:labeling")
    stdout.write(f"Demo labeling project: made once the demo dataset is ingested (job {job.pk})")


def recover(stdout):
    """A freeze cut off by Ctrl-C runs again; suggestions that waited for a demo run cut off
    with it are asked again, behind the run that now continues (runs/demo.py recovers first)."""
    from lifecycle.core import jobs
    from lifecycle.core.models import Job

    first = LabelingProject.objects.filter(name=NAME, status=LabelingProject.Status.FREEZING).select_related("freeze_job").first()
    if first is not None and first.freeze_job.status in (Job.Status.FAILED, Job.Status.INTERRUPTED):
        again = jobs.retry(first.freeze_job)
        LabelingProject.objects.filter(pk=first.pk).update(freeze_job=again)
        stdout.write(f"Demo labeling: the freeze runs again (job {again.pk})")
    project = LabelingProject.objects.filter(name=ROUND_TWO).first()
    asked = Job.objects.filter(task="lifecycle.labeling.tasks.suggest_labels", kwargs__project_id=getattr(project, "pk", None))
    last = asked.order_by("-pk").first() if project else None
    if last is not None and last.status in (Job.Status.FAILED, Job.Status.INTERRUPTED):
        again = jobs.retry(last)
        stdout.write(f"Demo labeling: suggestions asked again (job {again.pk})")


def _version():
    from lifecycle.datasets.demo import SLUG
    from lifecycle.datasets.models import DatasetVersion

    versions = DatasetVersion.objects.filter(dataset__slug=SLUG).select_related("dataset").order_by("-number")
    version = next((v for v in versions if v.usable_for_training), None)
    if version is None:
        raise RuntimeError(f"the demo dataset {SLUG} has no usable version yet")
    return version


def _other(labels, truth, k=1):
    others = [label for label in labels if label != truth]
    return others[(k - 1) % len(others)]


def _answer_for(username, item, met, gold_met, labels):
    """A scripted answer: who agrees, who slips, where the tie and the flag are. `met` and
    `gold_met` count the non-gold and gold examples this labeler answered before this one."""
    truth = item.example.label
    if item.is_gold:
        # demo-labeler-3 is careless on gold: every other one wrong.
        return {"label": _other(labels, truth)} if username == "demo-labeler-3" and gold_met % 2 == 0 else {"label": truth}
    if met == TIE_AT:
        return {"label": {"demo-labeler": truth, "demo-labeler-2": _other(labels, truth, 1),
                          "demo-labeler-3": _other(labels, truth, 2)}[username]}
    if met == FLAG_AT and username == "demo-labeler-3":
        return {"flagged": True, "note": "Two requests in one message: refund or cancel?"}
    if username == "demo-labeler-3" and met % 5 == 3 or username == "demo-labeler-2" and met % 11 == 4:
        return {"label": _other(labels, truth)}
    return {"label": truth}


def build():
    from lifecycle.labeling import qc

    engineer = get_user_model().objects.filter(username="demo-ml-engineer").first()
    project = LabelingProject.objects.filter(name=NAME).first() or _answered_project(engineer)
    if project.status == LabelingProject.Status.OPEN:
        qc.compute(project)
        project.request_freeze(get_user_model().objects.get(username="demo-approver"), override_reason=OVERRIDE)
    freeze_requested.send(sender=build, project=project)
    return project


def build_round_two():
    """Round 2 over the frozen version, for the labelers to go on with, and the demo run's
    suggestions for it (the training queue takes the run first)."""
    engineer = get_user_model().objects.filter(username="demo-ml-engineer").first()
    project = LabelingProject.objects.filter(name=ROUND_TWO).first()
    if project is None:
        frozen = LabelingProject.objects.select_related("frozen_version").get(name=NAME).frozen_version
        if frozen is None:
            raise RuntimeError(f"the demo project {NAME!r} has not been frozen")
        project = LabelingProject.create(engineer, frozen, name=ROUND_TWO, instructions=INSTRUCTIONS,
                                         label_set=list(frozen.label_set), overlap=2, gold_share=0.05, seed=1,
                                         min_gold_answers=3)
        _suggest_from_demo_run(project, engineer)
    return project


@transaction.atomic
def _answered_project(engineer):
    """The project and the labelers' answers, all or nothing: a second try after Ctrl-C
    finds either none of it or all of it."""
    users = get_user_model().objects
    version = _version()
    project = LabelingProject.create(engineer, version, name=NAME, instructions=INSTRUCTIONS,
                                     label_set=list(version.label_set), overlap=3, gold_share=0.05, seed=0,
                                     min_gold_answers=3)
    for username in LABELERS:
        user = users.get(username=username)
        met = gold_met = 0
        for _ in range(ANSWERED[username]):
            assignment = project.next_for(user)
            shown = timezone.now() - timedelta(seconds=_think_seconds(username, met + gold_met))
            Assignment.objects.filter(pk=assignment.pk).update(shown_at=shown)
            item = Item.objects.select_related("example").get(pk=assignment.item_id)
            assignment.answer(**_answer_for(username, item, met, gold_met, project.label_set))
            gold_met += item.is_gold
            met += not item.is_gold
    return project


def _suggest_from_demo_run(project, engineer):
    """Queue model suggestions from the demo run: the training queue takes the run first."""
    from lifecycle.runs.demo import NAME as RUN_NAME
    from lifecycle.runs.models import Run

    run = Run.objects.filter(name=RUN_NAME).first()
    if run is not None:
        project.request_suggestions(engineer, run, wait_for_run=True)
