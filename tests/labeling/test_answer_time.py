"""An answer's time runs from the moment the review page showed the example to the answer, and
QC's median per annotator is made of those times; counts in labeling texts read in the singular."""
from datetime import timedelta

import pytest
from django.utils import timezone

from lifecycle.labeling import qc
from lifecycle.labeling.models import Assignment, Item
from tests.conftest import make_user
from tests.labeling.factories import labeled_version, make_project


@pytest.fixture
def project(db, tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    return make_project(labeled_version(tmp_path, engineer, n=30), engineer, overlap=2, gold_share=0)


@pytest.fixture
def lee(db):
    return make_user("lee-labeler", "labeler")


def shown_ago(assignment, seconds):
    """As if the page had shown the example `seconds` ago."""
    Assignment.objects.filter(pk=assignment.pk).update(shown_at=timezone.now() - timedelta(seconds=seconds))


def answer_through_the_page(client, project, assignment):
    response = client.post(f"/labeling/{project.pk}/answer", {"item": assignment.item_id, "label": "billing"})
    assert response.status_code == 200
    return Assignment.objects.get(pk=assignment.pk)


def test_the_answer_time_runs_from_when_the_example_was_shown(client, project, lee):
    client.force_login(lee)
    shown = client.get(f"/labeling/{project.pk}/next").json()["item"]
    assignment = Assignment.objects.get(project=project, annotator=lee, item_id=shown)
    assert assignment.shown_at is not None
    shown_ago(assignment, 42)
    answered = answer_through_the_page(client, project, assignment)
    assert 42 <= answered.seconds < 42 + 30
    assert answered.seconds == pytest.approx((answered.answered_at - answered.shown_at).total_seconds())


def test_an_example_shown_again_is_timed_from_the_second_showing(client, project, lee):
    """Claimed, left on screen over a break, then the page reloaded: the break is not the answer time."""
    client.force_login(lee)
    shown = client.get(f"/labeling/{project.pk}/next").json()["item"]
    assignment = Assignment.objects.get(project=project, annotator=lee, item_id=shown)
    Assignment.objects.filter(pk=assignment.pk).update(served_at=timezone.now() - timedelta(hours=3),
                                                      shown_at=timezone.now() - timedelta(hours=3))
    assert client.get(f"/labeling/{project.pk}/next").json()["item"] == shown  # the reload shows it again
    shown_ago(Assignment.objects.get(pk=assignment.pk), 5)
    assert 5 <= answer_through_the_page(client, project, assignment).seconds < 3600


def test_an_undone_answer_is_timed_again_from_when_it_comes_back(client, project, lee):
    client.force_login(lee)
    first = client.get(f"/labeling/{project.pk}/next").json()["item"]
    assignment = Assignment.objects.get(project=project, annotator=lee, item_id=first)
    shown_ago(assignment, 300)
    assert answer_through_the_page(client, project, assignment).seconds >= 300
    assert client.post(f"/labeling/{project.pk}/undo").json()["item"] == first
    back = Assignment.objects.get(pk=assignment.pk)
    assert back.seconds is None and back.shown_at > assignment.shown_at
    shown_ago(back, 8)
    assert 8 <= answer_through_the_page(client, project, back).seconds < 300


def test_qc_reports_the_median_of_real_answer_times_per_annotator(client, project, lee):
    kim = make_user("kim-labeler", "labeler")
    for user, times in ((lee, [10, 20, 90]), (kim, [3, 4, 5, 6])):
        for seconds in times:
            assignment = project.next_for(user)
            shown_ago(assignment, seconds)
            assignment.answer(label="billing")
    data = qc.compute(project).data
    medians = {a["username"]: a["median_seconds"] for a in data["annotators"]}
    assert 20 <= medians["lee-labeler"] < 30
    assert 4.5 <= medians["kim-labeler"] < 14.5
    client.force_login(make_user("vic-viewer", "viewer"))
    page = client.get(f"/labeling/{project.pk}/qc").content.decode()
    assert "Median seconds per answer" in page and f"<td>{medians['lee-labeler']}</td>" in page


def test_an_answer_from_a_claim_made_before_shown_times_were_kept_has_no_time(project, lee):
    """Such an answer is left out of the median (shown as —), not counted as zero seconds."""
    assignment = project.next_for(lee)
    Assignment.objects.filter(pk=assignment.pk).update(shown_at=None)
    assignment.answer(label="billing")
    assert Assignment.objects.get(pk=assignment.pk).seconds is None
    annotator = qc.compute(project).data["annotators"][0]
    assert annotator["answers"] == 1 and annotator["median_seconds"] is None


def test_one_tie_reads_one_tie(project, lee):
    kim = make_user("kim-labeler", "labeler")
    project.next_for(lee).answer(label="billing")
    project.next_for(kim).answer(label="shipping")
    assert Item.objects.filter(project=project, state=Item.State.TIE).count() == 1
    reasons = " ".join(qc.compute(project).data["reasons"])
    assert "1 tie and" in reasons and "1 ties" not in reasons
    assert "30 examples have no final label yet" in reasons


def test_a_single_unfinished_example_reads_in_the_singular(tmp_path, db):
    engineer = make_user("erin-engineer", "ml_engineer")
    project = make_project(labeled_version(tmp_path, engineer, n=12, slug="small"), engineer, overlap=1, gold_share=0)
    lee = make_user("lee-labeler", "labeler")
    for _ in range(project.item_count - 1):
        project.next_for(lee).answer(label="billing")
    reasons = " ".join(qc.compute(project).data["reasons"])
    assert "1 example has no final label yet (1 waiting for answers, 0 ties and 0 flagged" in reasons


def test_the_demo_answers_carry_each_labelers_scripted_pace(tmp_path, db):
    """Nobody looked at the demo's scripted answers: their times are scripted too, per labeler."""
    from lifecycle.datasets.demo import SLUG
    from lifecycle.labeling import demo

    engineer = make_user("demo-ml-engineer", "ml_engineer")
    for username in demo.LABELERS:
        make_user(username, "labeler")
    make_user("demo-approver", "approver")  # the demo's approver overrides the failing QC to freeze
    labeled_version(tmp_path, engineer, n=200, slug=SLUG)
    annotators = {a["username"]: a for a in demo.build().latest_qc().data["annotators"]}
    for name, pace in demo.PACE.items():
        assert annotators[name]["median_seconds"] == pytest.approx(pace, abs=0.5)
    assert demo.PACE["demo-labeler-3"] < demo.PACE["demo-labeler-2"] < demo.PACE["demo-labeler"]  # careless is fastest
