"""Queues, answers, consensus and adjudication on the real database."""
import threading
from collections import Counter, defaultdict

import pytest
from django.db import connection

from lifecycle.core.models import AuditEvent
from lifecycle.labeling.models import Assignment, Decision, Item, LabelingError, LabelingProject
from tests.conftest import make_user
from tests.labeling.factories import label_queue, labeled_version, make_labelers, make_project, true_label

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(tmp_path, engineer):
    return labeled_version(tmp_path, engineer, n=60)


def answered_by_item(project):
    by_item = defaultdict(list)
    for item_id, user_id in Assignment.objects.filter(project=project, state="answered").values_list("item_id", "annotator_id"):
        by_item[item_id].append(user_id)
    return by_item


def test_a_project_has_one_item_per_example_in_a_seeded_order_with_gold_from_the_version(version, engineer):
    project = make_project(version, engineer, gold_share=0.1, seed=4)
    items = list(project.items.select_related("example"))
    assert len(items) == project.item_count == version.row_count
    assert sorted(i.position for i in items) == list(range(len(items)))
    assert [i.position for i in sorted(items, key=lambda i: i.example.row)] != list(range(len(items)))  # shuffled
    gold = [i for i in items if i.is_gold]
    assert len(gold) == project.gold_count == round(0.1 * len(items))
    assert all(i.gold_label == i.example.label and i.state == "gold" for i in gold)
    again = make_project(version, engineer, gold_share=0.1, seed=4)
    assert [(i.example_id, i.is_gold) for i in again.items.order_by("position")] == \
        [(i.example_id, i.is_gold) for i in sorted(items, key=lambda i: i.position)]
    assert AuditEvent.objects.filter(action="labeling.project_created", object_id=str(project.pk)).exists()


def test_every_example_gets_exactly_the_overlap_and_every_labeler_meets_every_gold_item(version, engineer):
    project = make_project(version, engineer, overlap=2, gold_share=0.1)
    labelers = make_labelers(3)
    # Round robin, a few answers at a time: the queues interleave as they would in real life.
    while any([label_queue(project, user, true_label, limit=4) for user in labelers]):
        pass
    by_item = answered_by_item(project)
    gold = set(project.items.filter(is_gold=True).values_list("pk", flat=True))
    for item in project.items.all():
        users = by_item[item.pk]
        assert len(users) == len(set(users))  # nobody saw it twice
        assert len(users) == (3 if item.pk in gold else 2), item
    assert Counter(s for s in project.items.values_list("state", flat=True)) == \
        {"agreed": project.item_count - project.gold_count, "gold": project.gold_count}
    assert project.next_for(labelers[0]) is None


def test_two_answers_that_agree_make_consensus_and_a_split_makes_a_tie(version, engineer):
    project = make_project(version, engineer, overlap=2, gold_share=0)
    a, b = make_labelers(2)
    first = project.next_for(a)
    first.answer(label="billing")
    item = Item.objects.get(pk=first.item_id)
    assert (item.state, item.answer_count, item.consensus_label) == ("open", 1, "")
    second = project.next_for(b)
    assert second.item_id == first.item_id  # b's queue starts at the same first example
    second.answer(label="shipping")
    item.refresh_from_db()
    assert (item.state, item.disagreement, item.consensus_label) == ("tie", True, "")
    a.next = project.next_for(a)
    a.next.answer(label="refund")
    project.next_for(b).answer(label="refund")
    agreed = Item.objects.get(pk=a.next.item_id)
    assert (agreed.state, agreed.consensus_label, agreed.disagreement) == ("agreed", "refund", False)


def test_majority_of_three_wins_and_a_flag_goes_to_adjudication(version, engineer):
    project = make_project(version, engineer, overlap=3, gold_share=0)
    users = make_labelers(3)
    for user, label in zip(users, ["billing", "billing", "refund"]):
        project.next_for(user).answer(label=label)
    item = project.items.get(position=0)
    assert (item.state, item.consensus_label, item.disagreement) == ("agreed", "billing", True)
    flagged = [project.next_for(user) for user in users]
    flagged[0].answer(flagged=True, note="this is two questions at once")
    for assignment in flagged[1:]:
        assignment.answer(label="shipping")
    assert Item.objects.get(pk=flagged[0].item_id).state == "flagged"


def test_the_same_answer_twice_is_one_answer_and_a_different_one_needs_an_undo(version, engineer):
    project = make_project(version, engineer, overlap=2, gold_share=0)
    user = make_labelers(1)[0]
    assignment = project.next_for(user)
    assignment.answer(label="billing")
    assignment.answer(label="billing")
    assert Assignment.objects.filter(item=assignment.item, annotator=user).count() == 1
    assert Item.objects.get(pk=assignment.item_id).answer_count == 1
    with pytest.raises(LabelingError, match="undo"):
        assignment.answer(label="refund")
    with pytest.raises(ValueError, match="not in this project's label set"):
        project.next_for(user).answer(label="weather")


def test_undo_brings_the_last_answer_back_first_and_updates_the_consensus(version, engineer):
    project = make_project(version, engineer, overlap=1, gold_share=0)
    user = make_labelers(1)[0]
    first = project.next_for(user)
    first.answer(label="billing")
    showing = project.next_for(user)
    assert showing.item_id != first.item_id
    project.undo_last(user)
    item = Item.objects.get(pk=first.item_id)
    assert (item.state, item.answer_count, item.consensus_label) == ("open", 0, "")
    back = project.next_for(user)
    assert back.item_id == first.item_id  # the undone example comes back before the one on screen
    back.answer(label="refund")
    assert project.next_for(user).item_id == showing.item_id
    assert Item.objects.get(pk=first.item_id).consensus_label == "refund"
    with pytest.raises(LabelingError, match="no answer to undo"):
        project.undo_last(make_labelers(1, prefix="fresh")[0])


def test_a_skip_frees_the_slot_for_someone_else_and_never_comes_back(version, engineer):
    project = make_project(version, engineer, overlap=1, gold_share=0)
    a, b = make_labelers(2)
    skipped = project.next_for(a)
    skipped.skip()
    assert Item.objects.get(pk=skipped.item_id).slots_taken == 0
    seen = [x.item_id for x in label_queue(project, a, true_label, limit=5)]
    assert skipped.item_id not in seen
    assert project.next_for(b).item_id == skipped.item_id
    # At the end of the project, a freed slot behind a labeler is still found (the slow path).
    rest = label_queue(project, a, true_label)
    assert skipped.item_id not in [x.item_id for x in rest]


def test_a_reviewer_decides_a_tie_once_the_answers_stay_and_the_decision_is_audited(version, engineer):
    project = make_project(version, engineer, overlap=2, gold_share=0)
    a, b = make_labelers(2)
    project.next_for(a).answer(label="billing")
    project.next_for(b).answer(label="shipping")
    item = project.items.get(position=0)
    assert item.state == "tie"
    decision = item.decide(engineer, "shipping", note="the order number is a delivery reference")
    item.refresh_from_db()
    assert (item.state, item.consensus_label) == ("decided", "shipping")
    assert sorted(a["label"] for a in decision.answers) == ["billing", "shipping"]
    assert Assignment.objects.filter(item=item, state="answered").count() == 2  # nothing deleted
    event = AuditEvent.objects.get(action="labeling.adjudicated")
    assert event.actor == engineer.username
    assert event.payload["overruled"] == [{"annotator": a.username, "label": "billing", "flagged": False, "note": ""}]
    with pytest.raises(LabelingError, match="already been adjudicated"):
        item.decide(engineer, "billing")
    with pytest.raises(LabelingError, match="already been adjudicated"):
        project.undo_last(a)
    assert Decision.objects.count() == 1
    item.refresh_from_db()
    assert item.consensus_label == "shipping"


def test_only_ties_and_flags_are_adjudicated_and_only_with_a_known_label(version, engineer):
    project = make_project(version, engineer, overlap=2, gold_share=0)
    a, b = make_labelers(2)
    project.next_for(a).answer(label="billing")
    project.next_for(b).answer(label="billing")
    with pytest.raises(LabelingError, match="Only ties and flagged"):
        project.items.get(position=0).decide(engineer, "refund")
    project.next_for(a).answer(label="billing")
    project.next_for(b).answer(label="refund")
    with pytest.raises(LabelingError, match="not in this project's label set"):
        project.items.get(position=1).decide(engineer, "weather")
    assert not Decision.objects.exists()


def test_creating_a_project_refuses_labels_outside_the_version_and_instruction_pairs(tmp_path, engineer, version):
    with pytest.raises(LabelingError, match="Not in the version's label set: weather"):
        make_project(version, engineer, label_set=["billing", "weather"])
    from tests.runs.factories import sft_version

    sft = sft_version(tmp_path, engineer)
    with pytest.raises(LabelingError, match="text-classification"):
        LabelingProject.create(engineer, sft, name="x", label_set=["a", "b"])
    assert not LabelingProject.objects.filter(name="x").exists()


# --- concurrency, against PostgreSQL ----------------------------------------------------------------


def _in_threads(targets):
    errors = []

    def run(target):
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
def test_labelers_pulling_at_the_same_moment_never_take_a_slot_beyond_the_overlap(tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    version = labeled_version(tmp_path, engineer, n=90)
    project = make_project(version, engineer, overlap=2, gold_share=0.1)
    labelers = make_labelers(6)
    barrier = threading.Barrier(len(labelers) + 1)

    def work(user):
        def target():
            barrier.wait()
            me = LabelingProject.objects.get(pk=project.pk)
            label_queue(me, user, true_label)
        return target

    # The same labeler in two tabs at once: still one answer per example.
    _in_threads([work(u) for u in labelers] + [work(labelers[0])])
    by_item = answered_by_item(project)
    gold = set(project.items.filter(is_gold=True).values_list("pk", flat=True))
    for item in project.items.all():
        users = by_item[item.pk]
        assert len(users) == len(set(users)), item
        assert len(users) == (len(labelers) if item.pk in gold else 2), item
        assert item.slots_taken == len(users)
    assert not Assignment.objects.filter(project=project, state="pending").exists()


def test_a_claim_left_on_screen_too_long_goes_back_to_the_pool(version, engineer, settings):
    from datetime import timedelta

    from django.utils import timezone

    from lifecycle.core.jobs import run_maintenance

    project = make_project(version, engineer, overlap=1, gold_share=0)
    idle, busy = make_labelers(2)
    left = project.next_for(idle)
    answered_meanwhile = project.next_for(busy)
    answered_meanwhile.answer(label="billing")
    Assignment.objects.filter(pk__in=[left.pk, answered_meanwhile.pk]).update(served_at=timezone.now() - timedelta(hours=2))
    assert Item.objects.get(pk=left.item_id).is_open is False
    settings.LABELING_CLAIM_TTL = 3600
    counts = run_maintenance()
    assert counts["expired_claims"] == 1  # an answered claim is never expired
    assert Assignment.objects.get(pk=left.pk).state == "expired"
    item = Item.objects.get(pk=left.item_id)
    assert (item.is_open, item.slots_taken) == (True, 0)
    newcomer = make_labelers(1, prefix="new")[0]
    assert project.next_for(newcomer).item_id == left.item_id  # someone else gets it now
    with pytest.raises(LabelingError, match="went back to the pool"):
        project.assignment_for(idle, left.item_id)
    assert project.next_for(idle).item_id != left.item_id
    settings.LABELING_CLAIM_TTL = 0
    assert run_maintenance()["expired_claims"] == 0
