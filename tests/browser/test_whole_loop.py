"""The whole loop in the browser, as the people who run it: a labeler labels the last examples
of a project by keyboard; an engineer decides the ties two labelers left, recomputes QC,
freezes the labels into a dataset version, trains on it from the New run form and watches the
run finish, registers it and asks for staging; two approvers compare the evidence with
production and approve; the engineer starts a 20 % canary. Traffic reaches a real serving
process and drifts; on-call checks drift, sees the alert on the on-call dashboard, opens the
deployment and rolls the canary back. The executive, on-call and debug dashboards are read
too, and every page seen is photographed, numbered, under the test's output folder
(pytest-playwright's `output_path`, test-results/<test id>/ by default).

Before the browser starts, in Python: version 1 (the session's trained model) in production
and deployed as stable, the model set to want two approvals for staging, the labeling project
over a 400-ticket version with two other labelers' answers (three of them ties), and the
processes a real installation runs (a worker for the default and monitoring queues, a training
worker, a serving process).

At the end the database must tell the same story: the audit chain verifies, and the labeler's
answers lead through their project, the frozen version, the run and the model version to the
deployment whose canary was rolled back by the on-call user."""
import time

import pytest

from lifecycle.core.models import AuditEvent
from lifecycle.datasets.models import Example
from lifecycle.datasets.synthetic import generate
from lifecycle.deployments.models import Deployment, Release, Rollback
from lifecycle.labeling.models import Assignment
from lifecycle.registry import lineage
from lifecycle.registry.models import Stage
from tests.browser import whole_loop_steps as steps
from tests.browser.test_registry import user_page
from tests.conftest import make_user
from tests.deployments.factories import promote
from tests.deployments.serving_helpers import start_serving
from tests.labeling.factories import label_queue, make_project, true_label
from tests.registry.factories import registered
from tests.runs.factories import ingest_rows
from tests.workers import output, start_manage, stop

TICKETS = 400
LEFT_FOR_THE_BROWSER = 12
TIES = (7, 111, 222)  # item positions where the second labeler is wrong


@pytest.fixture
def cast(transactional_db):
    """The demo's logins, so that the screenshots (and docs/tour.md, made from them) show the
    names a visitor of the demo logs in with."""
    return {"lee": make_user("demo-labeler", "labeler"), "kim": make_user("demo-labeler-2", "labeler"),
            "pat": make_user("demo-labeler-3", "labeler"), "erin": make_user("demo-ml-engineer", "ml_engineer"),
            "ann": make_user("demo-approver", "approver"), "abe": make_user("demo-approver-2", "approver"),
            "ona": make_user("demo-oncall", "oncall"), "vic": make_user("demo-viewer", "viewer")}


@pytest.fixture
def processes(store, redis, tmp_path):
    """The installation's processes, on this test's database and artifact store."""
    started = {"worker": start_manage(tmp_path, "lifecycle_worker", "default", "monitoring"),
               "training": start_manage(tmp_path, "lifecycle_worker", "training")}
    yield started
    for name, process in started.items():
        if process.poll() is not None:  # it died during the test: its last words
            print(f"--- {name} exited {process.returncode} ---\n{output(process)[-3000:]}")
        stop(process)


def stable_in_production(trained, cast, tmp_path):
    """v1 in production (two approvals) serving support-router alone; staging wants two approvals."""
    v1 = registered(trained, cast["erin"], tmp_path, slug="intent-router", name="lora minilm v1")
    promote(v1, Stage.PRODUCTION, cast["erin"], cast["ann"], cast["abe"])
    model = v1.model
    model.update_settings(cast["erin"], model.gate_settings, {"staging": 2, "production": 2})
    deployment = Deployment.create(cast["erin"], name=steps.DEPLOYMENT, model=model, stable=v1,
                                   description="Routes support tickets to the right team.")
    return model, deployment


def project_nearly_labeled(tmp_path, cast):
    """Two answers per ticket wanted; one labeler answered every ticket, another all but the
    last few, wrong on TIES of them (each a tie to adjudicate)."""
    # Tickets as they come: some quote an e-mail address or a card number (redacted on the way
    # in), a few are sent twice; every label is right.
    tickets = generate(TICKETS, seed=3, noise=0.0, pii_rate=0.05, dup_rate=0.02)
    version = ingest_rows(tmp_path, cast["erin"], list(tickets), slug="support-tickets")
    project = make_project(version, cast["erin"], name=steps.PROJECT, overlap=2, gold_share=0)
    label_queue(project, cast["kim"], true_label)

    def mostly_right(assignment):
        truth = assignment.item.example.label
        if assignment.item.position in TIES:
            return next(label for label in project.label_set if label != truth)
        return truth

    label_queue(project, cast["pat"], mostly_right, limit=TICKETS - LEFT_FOR_THE_BROWSER)
    return version, project


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_whole_loop_from_labels_to_a_rollback(browser, live_server, store, trained, cast, processes, tmp_path,
                                                  output_path):
    began = time.monotonic()
    model, deployment = stable_in_production(trained, cast, tmp_path)
    v1 = deployment.current_release.stable
    labeled, project = project_nearly_labeled(tmp_path, cast)
    processes["serving"] = start_serving(tmp_path)
    shots = steps.Shots(output_path)
    setup_ends = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()

    # The labeler.
    answered = steps.label_the_rest_by_keyboard(browser, live_server, cast["lee"], project, shots)
    assert answered == LEFT_FOR_THE_BROWSER

    # The engineer: QC, the frozen version, a run on it, the model version, the request.
    erin = user_page(browser, live_server, cast["erin"])
    assert steps.adjudicate_the_ties(erin, project, shots) == len(TIES)
    frozen = steps.freeze_the_labels(erin, live_server, project, 2 * TICKETS, shots)
    assert frozen.parent_id == labeled.pk and frozen.row_count == TICKETS
    run, _steps_seen = steps.train_on_it(erin, live_server, frozen, shots)
    v2, request = steps.register_and_request_staging(erin, run, model, shots)

    # The approvers.
    steps.compare_and_approve(browser, live_server, cast["ann"], request, model, shots)
    steps.second_approval(browser, live_server, cast["abe"], request, model, shots)
    v2.refresh_from_db()
    assert v2.stage == Stage.STAGING

    # The canary, and its traffic.
    steps.start_canary(erin, live_server, deployment, v2, shots)
    texts = list(Example.objects.filter(version=frozen, split=Example.VALIDATION).order_by("row")
                 .values_list("text", "label"))
    answered, feedback = steps.send_traffic(processes["serving"], deployment, cast["erin"], texts)
    assert answered["canary"] >= 200 and answered["stable"] > answered["canary"], answered
    steps.wait_monitored(deployment, [v1, v2], sum(answered.values()))

    # On-call: the drift check, the alert, the rollback.
    ona = steps.check_drift_and_see_the_alert(browser, live_server, cast["ona"], deployment, v2, shots)
    steps.roll_back(ona, live_server, deployment, shots)
    steps.read_the_dashboards(browser, live_server, cast["vic"], erin, ona, deployment, v2, shots)

    assert_the_database_tells_the_story(cast, project, frozen, run, v2, deployment, setup_ends)
    assert {"labeling-keyboard", "adjudication", "qc", "dataset-version", "run-training", "model-version",
            "evidence-compared", "second-approval", "canary-started", "drift-checked", "oncall-alert",
            "rolled-back", "executive", "oncall-after-rollback", "debug"} <= set(shots.taken)
    assert all(path.stat().st_size > 10_000 for path in shots.taken.values())
    print(f"whole loop: {time.monotonic() - began:.0f} s, {len(shots.taken)} screenshots in {output_path}")


def assert_the_database_tells_the_story(cast, project, frozen, run, version, deployment, setup_ends):
    assert AuditEvent.verify_chain() is None

    # From the labeler's answers to the deployment their labels reached.
    answers = list(Assignment.objects.filter(annotator=cast["lee"], state="answered").select_related("item__example"))
    assert {a.project_id for a in answers} == {project.pk}
    frozen_labels = dict(Example.objects.filter(version=frozen).values_list("row", "label"))
    assert all(frozen_labels[a.item.example.row] == a.label for a in answers)
    project.refresh_from_db()
    assert project.frozen_version_id == frozen.pk and run.dataset_version_id == frozen.pk
    assert version.run_id == run.pk
    assert [source["id"] for source in lineage.labeling_sources(version.lineage)] == [project.pk]
    reached = lineage.reached(version)
    assert [step["name"] for step in reached] == [deployment.name]
    assert "release 2 as canary (rolled back)" in reached[0]["detail"]
    release = Release.objects.get(deployment=deployment, candidate=version)
    assert release.status == Release.Status.ROLLED_BACK
    rollback = Rollback.objects.get(release=release)
    assert rollback.actor == cast["ona"] and not rollback.automatic and rollback.completed_at is not None

    # And the hash-chained trail alone links them: each event names the object the next one
    # starts from — the project's freeze names the version, the run names it, the model version
    # names the run, the release names the model version, and its rollback names the release.
    def event(action, obj):
        return AuditEvent.objects.get(action=action, object_type=obj._meta.label_lower, object_id=str(obj.pk)).payload

    assert event("labeling.frozen", project)["version"] == frozen.pk
    assert event("run.started", run)["dataset_version"] == frozen.pk
    assert event("model_version.created", version)["run"] == run.pk
    assert event("release.started", release)["candidate"] == version.pk
    rolled_back = event("release.rolled_back", release)
    assert (rolled_back["candidate"], rolled_back["rollback"]) == (version.pk, rollback.pk)

    # The audit trail holds each person's step, in the order they took them (None: the system
    # or whoever's approval made the move).
    erin, ann, abe, ona = (cast[name].username for name in ("erin", "ann", "abe", "ona"))
    wanted = [*[("labeling.adjudicated", erin)] * len(TIES), ("labeling.freeze_requested", erin),
              ("labeling.frozen", erin), ("run.started", erin), ("model_version.created", erin),
              ("promotion.requested", erin), ("promotion.approved", ann), ("promotion.approved", abe),
              ("stage.changed", None), ("release.started", erin), ("drift.checked", ona),
              ("release.rolled_back", ona)]
    trail = list(AuditEvent.objects.filter(seq__gt=setup_ends, action__in={action for action, _ in wanted})
                 .order_by("seq").values_list("action", "actor"))
    assert _in_order(wanted, trail), trail


def _in_order(wanted, seen):
    """Whether each (action, actor) of `wanted` comes in `seen`, in that order (actor None: anyone)."""
    events = iter(seen)
    return all(any(action == a and actor in (None, b) for a, b in events) for action, actor in wanted)
