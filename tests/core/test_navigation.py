"""The menu offers what the user's roles may open, the start page says per role what to do
now, sections still to be built answer a plain page, and no 404 ever lists the routes."""
import io
import json
import re

import pytest
from django.core.management import call_command
from django.test import override_settings

from lifecycle.datasets import uploads
from lifecycle.datasets.models import Dataset
from lifecycle.datasets.synthetic import generate
from tests.conftest import make_user
from tests.labeling.factories import labeled_version, make_project
from tests.runs.test_web import make_run

ALL_SECTIONS = ["Datasets", "Labeling", "Runs", "Registry", "Deployments", "Monitoring", "Audit", "Jobs"]
# What each role may open.
MENU = {
    "labeler": ["Labeling", "Jobs"],
    "ml_engineer": ALL_SECTIONS,
    "approver": ALL_SECTIONS,
    "oncall": ["Registry", "Deployments", "Monitoring", "Audit", "Jobs"],
    "viewer": ["Datasets", "Labeling", "Runs", "Registry", "Deployments", "Monitoring", "Jobs"],
}
ROUTE_LISTING = ("URLconf", "Django tried these URL patterns", "technical_404", "lifecycle.urls")


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"


def menu(response):
    nav = re.search(r'<nav class="mainnav"[^>]*>(.*?)</nav>', response.content.decode(), re.S)
    return re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', nav.group(1)) if nav else []


def home(client, user):
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    return response, response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("role", sorted(MENU))
def test_the_menu_shows_what_the_role_may_open_and_every_item_opens(client, role):
    client.force_login(make_user(f"someone-{role}", role))
    items = menu(client.get("/"))
    assert [label for _, label in items] == MENU[role]
    for url, label in items:
        assert client.get(url).status_code == 200, f"{role}: the menu item {label} ({url}) does not open"


@pytest.mark.django_db
@pytest.mark.parametrize("role, refused", [("labeler", "/datasets/"), ("oncall", "/runs/"), ("viewer", "/audit/")])
def test_a_page_left_out_of_the_menu_is_one_the_role_is_refused(client, role, refused):
    client.force_login(make_user(f"someone-{role}", role))
    assert refused not in [url for url, _ in menu(client.get("/"))]
    assert client.get(refused).status_code == 403


@pytest.mark.django_db
def test_a_superuser_sees_every_section_and_a_user_without_roles_none(client):
    client.force_login(make_user("ada-admin", superuser=True))
    assert [label for _, label in menu(client.get("/"))] == ALL_SECTIONS
    client.force_login(make_user("sam-stranger"))
    response = client.get("/")
    assert menu(response) == []
    assert "no role yet" in response.content.decode()


@pytest.mark.django_db
def test_a_user_with_two_roles_sees_both_menus(client):
    client.force_login(make_user("lab-and-call", "labeler", "oncall"))
    assert [label for _, label in menu(client.get("/"))] == ["Labeling", "Registry", "Deployments", "Monitoring", "Audit",
                                                                "Jobs"]


# --- the start page, per role -----------------------------------------------------------------


@pytest.fixture
def project(db, tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    version = labeled_version(tmp_path, engineer, n=30)
    return make_project(version, engineer, overlap=2, gold_share=0, name="Ticket intents")


def test_a_labeler_sees_their_queue_and_how_many_examples_wait(client, project):
    labeler = make_user("lee-labeler", "labeler")
    _, page = home(client, labeler)
    assert "Your labeling queues" in page
    assert f'href="/labeling/{project.pk}/review">Ticket intents</a>' in page
    assert "30 examples wait for you" in page
    for _ in range(3):
        project.next_for(labeler).answer(label="billing")
    project.next_for(labeler)  # on their screen now: still waiting for them
    assert "27 examples wait for you" in home(client, labeler)[1]
    assert "Recent uploads" not in page and "Promotions" not in page


def test_the_waiting_count_ends_at_zero_and_leaves_out_what_others_filled(client, project):
    labeler, other, third = (make_user(name, "labeler") for name in ("lee", "kim", "ray"))
    while (a := project.next_for(other)) is not None:
        a.answer(label="billing")
    assert project.waiting_for(labeler) == 30  # overlap 2: one slot left on each
    while (a := project.next_for(labeler)) is not None:
        a.answer(label="billing")
    assert project.waiting_for(labeler) == 0 and project.waiting_for(third) == 0
    assert "nothing waits for you" in home(client, labeler)[1]


def test_the_waiting_count_is_capped(client, project):
    assert project.waiting_for(make_user("lee", "labeler"), limit=10) == 10


def test_the_waiting_count_sees_a_slot_freed_behind_the_labeler(client, project):
    """Once nothing is ahead, an item a skip freed behind the labeler is still counted (and served)."""
    lee, kim, ray = (make_user(name, "labeler") for name in ("lee", "kim", "ray"))
    on_kims_screen = project.next_for(kim)
    project.next_for(ray).answer(label="billing")  # the same first item's second slot: it is full now
    while (a := project.next_for(lee)) is not None:
        a.answer(label="billing")  # every other item; the first was full when lee passed it
    assert project.waiting_for(lee) == 0
    on_kims_screen.skip()
    assert project.waiting_for(lee) == 1
    assert project.next_for(lee).item_id == on_kims_screen.item_id


def test_an_engineer_sees_recent_uploads_and_runs_with_links(client, project, tmp_path):
    engineer = project.created_by
    run = make_run(project.version, name="first try", user=engineer)
    (tmp_path / "more.jsonl").write_text('{"text": "hello there", "label": "billing"}\n')
    upload = uploads.receive(project.version.dataset, str(tmp_path / "more.jsonl"), "more.jsonl", user=engineer,
                             on_error="reject")
    _, page = home(client, engineer)
    assert "Recent uploads" in page and f'href="/datasets/uploads/{upload.pk}/">more.jsonl → tickets</a>' in page
    assert "by erin-engineer" in page
    assert "Recent runs" in page and f'href="/runs/{run.pk}/">#{run.pk} first try</a>' in page
    assert 'href="/runs/new">New run</a>' in page and 'href="/datasets/new">New dataset</a>' in page
    assert "Your labeling queues" not in page


@pytest.mark.django_db
def test_an_approver_sees_promotions_and_pii_waiting_for_sign_off(client, tmp_path):
    approver = make_user("alex-approver", "approver")
    _, page = home(client, approver)
    assert "Promotions waiting for approval" in page and "No promotion waits for approval." in page
    assert "No dataset version waits for a PII sign-off." in page

    Dataset.create(None, slug="support", name="Support", pii_policy="allow")
    path = tmp_path / "pii.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in generate(100, pii_rate=0.3)))
    # The import's heartbeat thread cannot see this test's uncommitted job row; no beat comes.
    with override_settings(JOB_HEARTBEAT_SECONDS=3600):
        call_command("dataset_import", str(path), dataset="support", stdout=io.StringIO())
    page = home(client, approver)[1]
    assert 'href="/datasets/support/v1/">support v1</a>' in page
    client.post("/datasets/support/v1/signoff", {"reason": "consent recorded in ticket LC-12"})
    assert "support v1" not in home(client, approver)[1]


def test_a_viewer_sees_what_they_may_read(client, project):
    run = make_run(project.version, name="first try", user=project.created_by)
    _, page = home(client, make_user("vic-viewer", "viewer"))
    assert "What you may read" in page
    assert f'href="/datasets/{project.version.dataset.slug}/"' in page and f'href="/runs/{run.pk}/"' in page
    assert f'href="/labeling/{project.pk}/">Ticket intents</a>' in page
    assert "New run" not in page and "Recent uploads" not in page and "Your labeling queues" not in page


def test_the_start_page_costs_a_bounded_number_of_queries(client, project, django_assert_max_num_queries):
    labeler = make_user("lee", "labeler", "ml_engineer", "viewer", "approver", "oncall")
    for n in range(12):
        make_project(project.version, project.created_by, name=f"more {n}")
        make_run(project.version, name=f"run {n}", user=project.created_by)
    client.force_login(labeler)
    with django_assert_max_num_queries(60):
        assert client.get("/").status_code == 200


# --- 404s ----------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("url", ["/no/such/page", "/jobs/999999", "/labeling/999999/", "/datasets/nope/"])
def test_a_404_is_our_page_whatever_debug_says(client, debug, url):
    client.force_login(make_user("ada-admin", superuser=True))
    with override_settings(DEBUG=debug):
        response = client.get(url)
    assert response.status_code == 404
    page = response.content.decode()
    assert "There is nothing at this address." in page and 'class="mainnav"' in page
    assert not any(text in page for text in ROUTE_LISTING)
    assert "Content-Security-Policy" in response.headers


@pytest.mark.django_db
def test_with_debug_on_a_missing_slash_is_still_redirected_and_anonymous_404s_stay_404(client):
    with override_settings(DEBUG=True):
        assert client.get("/no/such/page").status_code == 404  # no login needed to learn nothing is there
        client.force_login(make_user("ada-admin", superuser=True))
        response = client.get("/datasets")
    assert response.status_code == 301 and response["Location"] == "/datasets/"


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [False, True])
def test_an_unknown_api_address_answers_json(client, debug):
    client.force_login(make_user("ada-admin", superuser=True))
    with override_settings(DEBUG=debug):
        response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"] == "not_found"
