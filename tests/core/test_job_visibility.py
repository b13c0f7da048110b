"""A job is visible to whoever started it and to the roles that may see the object it works on;
any other user gets 404 from its pages and the API, and does not find it in the list."""
import pytest

from lifecycle.core import jobs
from lifecycle.core.models import Job
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

TRAIN = "lifecycle.runs.tasks.train_run"
QC = "lifecycle.labeling.tasks.compute_qc"
SEED_PROJECT = "lifecycle.labeling.tasks.seed_demo_project"
VERIFY = "lifecycle.core.tasks.verify_audit_chain"


def make_job(task, user=None, result=None):
    job = Job.create_queued(task, jobs.get_task(task).queue, {}, user=user)
    if result is not None:
        Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, result=result)
    return job


def reads(client, user, job):
    """(page, API, listed) for `user` looking at `job`."""
    client.force_login(user)
    listed = f"/jobs/{job.pk}" in client.get("/jobs/").content.decode()
    return client.get(f"/jobs/{job.pk}").status_code, client.get(f"/api/v1/jobs/{job.pk}").status_code, listed


def test_a_labeler_sees_their_own_jobs_but_not_a_runs(client, engineer, labeler):
    run_job = make_job(TRAIN, engineer, result={"test_metrics": {"accuracy": 0.91}})
    own = make_job(QC, labeler)
    assert reads(client, labeler, own) == (200, 200, True)
    assert reads(client, labeler, run_job) == (404, 404, False)
    assert "0.91" not in client.get("/jobs/").content.decode()


def test_qc_outcomes_of_others_stay_hidden_from_labelers(client, engineer, labeler):
    qc = make_job(QC, engineer, result={"passes": False, "alpha": 0.41})
    assert reads(client, labeler, qc) == (404, 404, False)
    assert reads(client, make_user("vic", "viewer"), qc) == (200, 200, True)


def test_a_labeler_sees_jobs_of_what_labelers_may_see(client, labeler):
    assert reads(client, labeler, make_job(SEED_PROJECT)) == (200, 200, True)


@pytest.mark.parametrize("role", ["ml_engineer", "approver", "viewer"])
def test_run_readers_see_the_run_job(client, engineer, role):
    job = make_job(TRAIN, engineer, result={"test_metrics": {"accuracy": 0.91}})
    assert reads(client, make_user("reader", role), job) == (200, 200, True)
    assert client.get(f"/api/v1/jobs/{job.pk}").json()["result"] == {"test_metrics": {"accuracy": 0.91}}


def test_oncall_sees_the_audit_check_but_not_training(client, engineer, oncall):
    assert reads(client, oncall, make_job(VERIFY, engineer)) == (200, 200, True)
    assert reads(client, oncall, make_job(TRAIN, engineer)) == (404, 404, False)


def test_superusers_see_every_job(client, engineer, admin_user):
    assert reads(client, admin_user, make_job(QC, engineer)) == (200, 200, True)


def test_a_job_of_an_unregistered_task_is_its_creators_alone(client, engineer, approver):
    job = Job.create_queued("lifecycle.gone.tasks.old_task", "default", {}, user=approver)
    assert reads(client, approver, job) == (200, 200, True)
    assert reads(client, engineer, job) == (404, 404, False)


def test_cancel_of_a_job_one_may_not_see_is_404_and_changes_nothing(client, engineer, labeler):
    job = make_job(TRAIN, engineer)
    client.force_login(labeler)
    assert client.post(f"/jobs/{job.pk}/cancel").status_code == 404
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED


def test_every_task_of_the_product_names_who_may_read_its_jobs():
    jobs.tasks_readable_by(())  # imports every app's tasks
    unnamed = [name for name, spec in jobs._registry.items() if name.startswith("lifecycle.") and not spec.roles]
    assert not unnamed, f"give these tasks roles=(...): {unnamed}"
