"""The labeling pages and JSON endpoints through the test client: roles, bad input, escaping."""
import json

import pytest
from django.test import Client

from lifecycle.labeling.models import Assignment, Decision, Item, LabelingProject
from tests.conftest import client_for
from tests.labeling.factories import labeled_version, make_labelers, make_project

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(tmp_path, engineer):
    return labeled_version(tmp_path, engineer, n=40)


@pytest.fixture
def project(version, engineer):
    return make_project(version, engineer, overlap=2, gold_share=0.1)


def post(client, url, **data):
    return client.post(url, data, HTTP_ACCEPT="application/json")


def next_json(client, project):
    response = client.get(f"/labeling/{project.pk}/next")
    assert response.status_code == 200, response.content
    return response.json()


def test_a_labeler_pulls_answers_and_gets_the_next_example_in_one_request(client, project, labeler):
    client_for(client, labeler)
    first = next_json(client, project)
    assert set(first) == {"item", "text", "suggestion", "done"}  # no gold flag, no other answers
    response = post(client, f"/labeling/{project.pk}/answer", item=first["item"], label="billing")
    assert response.status_code == 200
    second = response.json()
    assert second["item"] != first["item"] and second["done"] == 1
    assert Assignment.objects.get(item_id=first["item"], annotator=labeler).label == "billing"


def test_gold_examples_look_like_any_other(client, project, labeler):
    client_for(client, labeler)
    gold = set(project.items.filter(is_gold=True).values_list("pk", flat=True))
    seen_gold = []
    data = next_json(client, project)
    while data["item"]:
        if data["item"] in gold:
            seen_gold.append(data)
        data = post(client, f"/labeling/{project.pk}/answer", item=data["item"], label="refund").json()
    assert len(seen_gold) == len(gold)
    assert all(set(d) == {"item", "text", "suggestion", "done"} for d in seen_gold)
    assert "Your queue is empty" in data["message"]


def test_an_answer_for_an_example_not_in_my_queue_is_refused_and_nothing_is_saved(client, project, labeler):
    other = make_labelers(1, prefix="other")[0]
    theirs = project.next_for(other)
    client_for(client, labeler)
    response = post(client, f"/labeling/{project.pk}/answer", item=theirs.item_id, label="billing")
    assert response.status_code == 403
    assert "not in your queue" in response.json()["error"]
    never_served = project.items.exclude(pk=theirs.item_id).first()
    assert post(client, f"/labeling/{project.pk}/answer", item=never_served.pk, label="billing").status_code == 403
    assert not Assignment.objects.filter(annotator=labeler).exists()
    assert Item.objects.get(pk=theirs.item_id).answer_count == 0


def test_a_label_outside_the_set_and_a_missing_field_are_400(client, project, labeler):
    client_for(client, labeler)
    item = next_json(client, project)["item"]
    response = post(client, f"/labeling/{project.pk}/answer", item=item, label="<script>weather</script>")
    assert response.status_code == 400
    assert "not in this project's label set" in response.json()["error"]
    assert post(client, f"/labeling/{project.pk}/answer", item=item).status_code == 400
    assert post(client, f"/labeling/{project.pk}/answer", label="billing").status_code == 400
    assert post(client, f"/labeling/{project.pk}/answer", item="seven", label="billing").status_code == 400
    assert Assignment.objects.get(item_id=item, annotator=labeler).state == "pending"


def test_the_same_answer_twice_is_one_answer(client, project, labeler):
    client_for(client, labeler)
    item = next_json(client, project)["item"]
    first = post(client, f"/labeling/{project.pk}/answer", item=item, label="billing")
    again = post(client, f"/labeling/{project.pk}/answer", item=item, label="billing")
    assert first.status_code == again.status_code == 200
    assert Assignment.objects.filter(item_id=item, state="answered").count() == 1
    assert Item.objects.get(pk=item).answer_count == 1
    changed = post(client, f"/labeling/{project.pk}/answer", item=item, label="refund")
    assert changed.status_code == 409 and "undo" in changed.json()["error"]


def test_skip_flag_and_undo(client, project, labeler):
    client_for(client, labeler)
    first = next_json(client, project)["item"]
    second = post(client, f"/labeling/{project.pk}/skip", item=first).json()["item"]
    assert Assignment.objects.get(item_id=first, annotator=labeler).state == "skipped"
    assert post(client, f"/labeling/{project.pk}/answer", item=first, label="billing").status_code == 403
    third = post(client, f"/labeling/{project.pk}/answer", item=second, flag="on", note="two intents").json()["item"]
    flagged = Assignment.objects.get(item_id=second, annotator=labeler)
    assert (flagged.flagged, flagged.note, flagged.label) == (True, "two intents", "")
    back = post(client, f"/labeling/{project.pk}/undo").json()
    assert back["item"] == second  # the undone example is in front of the labeler again
    assert Assignment.objects.get(item_id=second, annotator=labeler).state == "pending"
    assert post(client, f"/labeling/{project.pk}/answer", item=second, label="refund").json()["item"] == third


def test_undo_after_adjudication_is_refused_with_a_message(client, project, labeler, engineer):
    other = make_labelers(1, prefix="other")[0]
    client_for(client, labeler)
    item = next_json(client, project)["item"]
    post(client, f"/labeling/{project.pk}/answer", item=item, label="billing")
    project.assignment_for(other, project.next_for(other).item_id).answer(label="shipping")
    Item.objects.get(pk=item).decide(engineer, "shipping")
    response = post(client, f"/labeling/{project.pk}/undo")
    assert response.status_code == 409
    assert "already been adjudicated" in response.json()["error"]
    assert Assignment.objects.get(item_id=item, annotator=labeler).label == "billing"


def test_csrf_is_required_for_answers(project, labeler):
    client = Client(enforce_csrf_checks=True)
    client.force_login(labeler)
    item = client.get(f"/labeling/{project.pk}/next").json()["item"]
    assert client.post(f"/labeling/{project.pk}/answer", {"item": item, "label": "billing"}).status_code == 403
    assert Assignment.objects.get(item_id=item).state == "pending"


def test_roles_decide_who_sees_what(client, project, labeler, engineer, approver, viewer, stranger):
    pages = {
        "list": "/labeling/", "detail": f"/labeling/{project.pk}/", "review": f"/labeling/{project.pk}/review",
        "next": f"/labeling/{project.pk}/next", "table": f"/labeling/{project.pk}/table",
        "adjudication": f"/labeling/{project.pk}/adjudication", "qc": f"/labeling/{project.pk}/qc",
        "create": "/labeling/new",
    }
    allowed = {
        labeler: {"list", "detail", "review", "next"},
        engineer: {"list", "detail", "table", "adjudication", "qc", "create"},
        approver: {"list", "detail", "table", "adjudication", "qc"},
        viewer: {"list", "detail", "qc"},
        stranger: set(),
    }
    for user, ok in allowed.items():
        client_for(client, user)
        for name, url in pages.items():
            status = client.get(url).status_code
            assert (status == 200) == (name in ok), (user.username, name, status)
    client_for(client, viewer)
    for url in (f"/labeling/{project.pk}/answer", f"/labeling/{project.pk}/freeze", f"/labeling/{project.pk}/qc/run",
                f"/labeling/{project.pk}/items/{project.items.first().pk}/decide"):
        assert client.post(url, {"item": 1, "label": "billing"}).status_code == 403, url
    client.logout()
    assert client.get(f"/labeling/{project.pk}/").status_code == 302  # to the login page


def test_a_labeler_never_sees_other_peoples_answers(client, project, labeler):
    other = make_labelers(1, prefix="other")[0]
    theirs = project.next_for(other)
    theirs.answer(label="shipping")
    client_for(client, labeler)
    data = next_json(client, project)
    assert data["item"] == theirs.item_id  # the same example, shown without the other answer
    assert "shipping" not in json.dumps(data)
    assert client.get(f"/labeling/{project.pk}/table").status_code == 403


def test_html_in_example_text_is_escaped_on_every_page(tmp_path, client, engineer, labeler):
    from tests.runs.factories import ingest_rows

    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    rows = [{"text": f"{evil} message {i} about parcels", "label": ["a", "b"][i % 2], "customer_id": f"c{i}"} for i in range(6)]
    version = ingest_rows(tmp_path, engineer, rows, slug="evil")
    project = make_project(version, engineer, overlap=2, gold_share=0)
    a, b = make_labelers(2)
    project.next_for(a).answer(label="a")
    project.next_for(b).answer(label="b")
    client_for(client, labeler)
    assert next_json(client, project)["text"].startswith(evil)  # JSON carries text; review.js sets textContent
    client_for(client, engineer)
    for url in (f"/labeling/{project.pk}/table", f"/labeling/{project.pk}/adjudication"):
        html = client.get(url).content.decode()
        assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html, url


def test_the_table_filters(client, project, engineer):
    a, b = make_labelers(2)
    for user, label in ((a, "billing"), (b, "shipping")):
        project.next_for(user).answer(label=label)
    first_agree = [project.next_for(u) for u in (a, b)]
    for x in first_agree:
        x.answer(label="refund")
    flagged = project.next_for(a)
    flagged.answer(flagged=True, note="unclear")
    client_for(client, engineer)

    def positions(query):
        response = client.get(f"/labeling/{project.pk}/table?{query}")
        assert response.status_code == 200
        return {item.position for item in response.context["rows"]}

    assert positions("show=disagreements") == {0}
    assert positions("show=ties") == {0}
    assert positions("show=flagged") == {Item.objects.get(pk=flagged.item_id).position}
    assert positions(f"annotator={a.username}") == {0, 1, Item.objects.get(pk=flagged.item_id).position}
    # An unknown filter shows every example and says what was wrong.
    assert len(positions("show=nonsense")) == min(50, project.item_count)
    assert client.get(f"/labeling/{project.pk}/table?show=nonsense").context["form"].errors


def test_create_a_project_through_the_form_and_its_bad_inputs(client, version, engineer):
    client_for(client, engineer)
    base = {"name": "Review", "version": version.pk, "overlap": 3, "gold_share": 0.05, "seed": 1, "min_gold_accuracy": 0.8,
            "min_kappa": 0.6, "min_alpha": 0.667, "min_label_agreement": 0.6, "min_gold_answers": 5, "low_confidence": 0.6}
    for bad, field in (({"overlap": 6}, "overlap"), ({"gold_share": 0.9}, "gold_share"), ({"name": ""}, "name"),
                       ({"labels": "billing, weather"}, "labels"), ({"labels": "billing, billing"}, "labels"),
                       ({"version": 999999}, "version")):
        response = client.post("/labeling/new", {**base, **bad})
        assert response.status_code == 200 and field in response.context["form"].errors, bad
    assert not LabelingProject.objects.exists()
    response = client.post("/labeling/new", {**base, "labels": "refund, billing"})
    project = LabelingProject.objects.get()
    assert response.status_code == 302 and response.url == project.get_absolute_url()
    assert project.label_set == ["refund", "billing"] and project.item_count == version.row_count
    page = client.get(project.get_absolute_url()).content.decode()
    assert "Create version from labels" in page


def test_adjudicate_through_the_page(client, project, engineer, approver):
    a, b = make_labelers(2)
    project.next_for(a).answer(label="billing")
    project.next_for(b).answer(label="shipping")
    item = project.items.get(position=0)
    client_for(client, approver)
    assert client.post(f"/labeling/{project.pk}/items/{item.pk}/decide", {"label": "billing"}).status_code == 403
    client_for(client, engineer)
    page = client.get(f"/labeling/{project.pk}/adjudication")
    assert [i.pk for i in page.context["page"].object_list] == [item.pk]
    response = client.post(f"/labeling/{project.pk}/items/{item.pk}/decide", {"label": "shipping", "note": "see order"})
    assert response.status_code == 302
    assert Decision.objects.get().note == "see order"
    again = client.post(f"/labeling/{project.pk}/items/{item.pk}/decide", {"label": "billing"}, follow=True)
    assert "already been adjudicated" in again.content.decode()
    assert Item.objects.get(pk=item.pk).consensus_label == "shipping"


def test_an_example_adjudicated_while_on_a_labelers_screen_leaves_their_queue(client, version, engineer, labeler):
    project = make_project(version, engineer, overlap=3, gold_share=0)
    a, b = make_labelers(2)
    project.next_for(a).answer(flagged=True, note="two questions")
    client_for(client, labeler)
    on_screen = next_json(client, project)["item"]
    item = Item.objects.get(pk=on_screen)
    assert item.state == "flagged"
    item.decide(engineer, "refund")
    item.refresh_from_db()
    assert (item.is_open, item.slots_taken) == (False, 1)  # the flagger's slot; the labeler's is released
    response = post(client, f"/labeling/{project.pk}/answer", item=on_screen, label="billing")
    assert response.status_code == 409 and "adjudicated this example while it was on your screen" in response.json()["error"]
    assert next_json(client, project)["item"] != on_screen
    assert project.next_for(b).item_id != on_screen  # nobody else is served a decided example
    assert Item.objects.get(pk=on_screen).answer_count == 1
