"""Freezing: refused with QC's reasons, allowed when QC passes or an approver overrides in
writing; the child version carries the final labels and the QC summary."""
import pytest

from lifecycle.core.models import AuditEvent, Job
from lifecycle.datasets.models import DatasetVersion
from lifecycle.datasets.versions import iter_row_batches
from lifecycle.labeling import qc
from lifecycle.labeling.models import FreezeRefused, Item, LabelingError, LabelingProject
from tests.conftest import client_for, make_user
from tests.labeling.factories import label_queue, labeled_version, make_labelers, make_project, true_label
from tests.workers import run_burst

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people(db):
    return {"engineer": make_user("erin-engineer", "ml_engineer"), "approver": make_user("alex-approver", "approver")}


def versions_of(project):
    return DatasetVersion.objects.filter(dataset=project.version.dataset).count()


def labels_of(version):
    return [label for batch in iter_row_batches(version, columns=["label"]) for label in batch["label"]]


def finish(project, users, choose=true_label):
    while any([label_queue(project, user, choose, limit=5) for user in users]):
        pass


def test_freeze_is_refused_with_reasons_and_nothing_is_written(tmp_path, people, redis):
    engineer = people["engineer"]
    project = make_project(labeled_version(tmp_path, engineer, n=30), engineer, overlap=2, gold_share=0.1)
    a, b = make_labelers(2)
    label_queue(project, a, true_label, limit=5)
    before = versions_of(project)
    with pytest.raises(FreezeRefused, match="QC is older than the latest answers"):
        project.request_freeze(engineer)
    qc.compute(project)
    with pytest.raises(FreezeRefused) as refused:
        project.request_freeze(engineer)
    assert any("no final label yet" in reason for reason in refused.value.reasons)
    with pytest.raises(FreezeRefused, match="Only an approver can override"):
        project.request_freeze(engineer, override_reason="we need it today")
    project.refresh_from_db()
    assert project.status == "open" and project.freeze_job is None
    assert versions_of(project) == before
    assert not AuditEvent.objects.filter(action__startswith="labeling.freeze").exists()


def test_passing_qc_freezes_into_a_child_version_with_the_consensus_and_the_summary(tmp_path, people, redis, client):
    engineer = people["engineer"]
    version = labeled_version(tmp_path, engineer, n=30)
    project = make_project(version, engineer, overlap=2, gold_share=0.1)
    a, b = make_labelers(2)
    # Both say "refund" for the first three examples they meet, the version's label otherwise.
    def choose(assignment):
        return "refund" if assignment.position < 3 and not assignment.item.is_gold else true_label(assignment)
    finish(project, [a, b], choose)
    qc.compute(project)
    client_for(client, engineer)
    response = client.post(f"/labeling/{project.pk}/freeze", follow=True)
    assert "being written" in response.content.decode()
    project.refresh_from_db()
    assert project.status == "freezing"
    assert client.post(f"/labeling/{project.pk}/answer").status_code == 403  # engineers do not label
    with pytest.raises(LabelingError, match="freezing"):
        project.next_for(a)
    log = run_burst(tmp_path, "default")
    project.refresh_from_db()
    assert Job.objects.get(pk=project.freeze_job_id).status == "succeeded", log
    child = project.frozen_version
    assert (child.parent_id, child.operation, project.status) == (version.pk, "relabel", "frozen")
    expected = labels_of(version)
    for row, label in Item.objects.filter(project=project).values_list("example__row", "consensus_label"):
        expected[row] = label
    assert labels_of(child) == expected
    changed = sum(x != y for x, y in zip(labels_of(version), expected))
    summary = child.manifest["reports"]["labeling"]
    assert summary["labels_changed"] == changed > 0
    assert summary["qc_passes"] is True and summary["override"] is None
    assert summary["project"] == project.pk and summary["alpha"] is not None
    assert AuditEvent.objects.filter(action="labeling.frozen", object_id=str(project.pk)).exists()
    assert DatasetVersion.objects.get(pk=version.pk).manifest_sha256 == version.manifest_sha256  # parent untouched


def test_an_approver_overrides_failing_qc_in_writing_and_it_is_audited(tmp_path, people, redis, client):
    engineer, approver = people["engineer"], people["approver"]
    version = labeled_version(tmp_path, engineer, n=30)
    project = make_project(version, engineer, overlap=2, gold_share=0.1)
    a, b = make_labelers(2)
    label_queue(project, a, true_label, limit=10)
    label_queue(project, b, lambda x: "billing", limit=10)
    qc.compute(project)
    client_for(client, approver)
    refused = client.post(f"/labeling/{project.pk}/freeze", {"override_reason": "   "}, follow=True).content.decode()
    assert "Not frozen" in refused and "no final label yet" in refused
    reason = "Pilot batch: the rest is relabeled next week; ticket LAB-12."
    client.post(f"/labeling/{project.pk}/freeze", {"override_reason": reason})
    event = AuditEvent.objects.get(action="labeling.qc_overridden")
    assert event.actor == approver.username and event.payload["reason"] == reason
    assert any("no final label yet" in r for r in event.payload["reasons"])
    log = run_burst(tmp_path, "default")
    project = LabelingProject.objects.get(pk=project.pk)
    assert project.status == "frozen", log
    summary = project.frozen_version.manifest["reports"]["labeling"]
    assert summary["override"]["approver"] == approver.username and summary["override"]["reason"] == reason
    assert summary["rows_without_final_label"] > 0
    page = client.get(project.get_absolute_url()).content.decode()
    assert "QC overridden by alex-approver" in page and "frozen-version" in page


def test_freezing_with_stale_qc_queues_a_fresh_computation_and_says_so(tmp_path, people, redis, client):
    engineer = people["engineer"]
    project = make_project(labeled_version(tmp_path, engineer, n=20), engineer, overlap=1, gold_share=0)
    label_queue(project, make_labelers(1)[0], true_label, limit=3)
    client_for(client, engineer)
    page = client.post(f"/labeling/{project.pk}/freeze", follow=True).content.decode()
    assert "QC is older than the latest answers" in page
    project.refresh_from_db()
    assert project.qc_job is not None and project.qc_job.status == "queued"  # kept, not rolled back
    assert project.status == "open"
