"""QC statistics of a real project against the reference implementations, and the QC job in a
real worker."""
import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from lifecycle.core.models import Job
from lifecycle.labeling import qc
from lifecycle.labeling.models import Assignment, QCReport
from tests.conftest import client_for
from tests.labeling.factories import LABELS, label_queue, labeled_version, make_labelers, make_project
from tests.workers import run_burst


def noisy(accuracy, seed):
    """A labeler who gives the version's label with probability `accuracy`, else another one."""
    rng = np.random.default_rng(seed)

    def choose(assignment):
        truth = assignment.item.example.label
        if rng.random() < accuracy:
            return truth
        return rng.choice([label for label in LABELS if label != truth])
    return choose


def answered_project(tmp_path, engineer, accuracies=(0.95, 0.9, 0.85, 0.3), n=90, overlap=3):
    version = labeled_version(tmp_path, engineer, n=n)
    project = make_project(version, engineer, overlap=overlap, gold_share=0.15, min_gold_answers=5, min_kappa=0.3)
    labelers = make_labelers(len(accuracies))
    choosers = [noisy(a, seed) for seed, a in enumerate(accuracies)]
    while any([label_queue(project, user, choose, limit=3) for user, choose in zip(labelers, choosers)]):
        pass
    return project, labelers


def reference_numbers(project):
    rows = list(Assignment.objects.filter(project=project, state="answered")
                .values_list("item_id", "annotator__username", "label", "item__is_gold"))
    users = sorted({u for _, u, _, _ in rows})
    items = sorted({i for i, _, _, _ in rows})
    index = {label: k for k, label in enumerate(project.label_set)}
    matrix = np.full((len(users), len(items)), np.nan)
    for item, user, label, _ in rows:
        matrix[users.index(user), items.index(item)] = index[label]
    pairs = {}
    for a in range(len(users)):
        for b in range(a + 1, len(users)):
            both = ~np.isnan(matrix[a]) & ~np.isnan(matrix[b])
            if both.any():
                pairs[(users[a], users[b])] = cohen_kappa_score(matrix[a, both], matrix[b, both],
                                                                labels=list(range(len(index))))
    non_gold = {i for i, _, _, g in rows if not g}
    full = [k for k, item in enumerate(items) if item in non_gold and (~np.isnan(matrix[:, k])).sum() == project.overlap]
    columns = np.array([matrix[~np.isnan(matrix[:, k]), k] for k in full], dtype=int)
    table, _ = aggregate_raters(columns, n_cat=len(index))
    return {"pairs": pairs, "fleiss": fleiss_kappa(table, method="fleiss"), "fleiss_items": len(full),
            "alpha": krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal",
                                        value_domain=list(range(len(index))))}


@pytest.mark.django_db
def test_qc_numbers_equal_scikit_learn_statsmodels_and_krippendorff(tmp_path, engineer):
    project, labelers = answered_project(tmp_path, engineer)
    report = qc.compute(project)
    expected = reference_numbers(project)
    data = report.data
    assert data["alpha"] == pytest.approx(expected["alpha"], abs=1e-4)
    assert data["fleiss_kappa"] == pytest.approx(expected["fleiss"], abs=1e-4)
    assert data["fleiss_items"] == expected["fleiss_items"] > 0
    assert {(p["a"], p["b"]): p["kappa"] for p in data["pairs"]} == pytest.approx(expected["pairs"], abs=1e-4)
    assert report.answers == Assignment.objects.filter(project=project, state="answered").count()


@pytest.mark.django_db
def test_gold_accuracy_and_the_thresholds_mark_the_unreliable_annotator(tmp_path, engineer):
    project, labelers = answered_project(tmp_path, engineer)
    report = qc.compute(project)
    by_name = {a["username"]: a for a in report.data["annotators"]}
    for user in labelers:
        gold = Assignment.objects.filter(project=project, annotator=user, state="answered", item__is_gold=True)
        right = sum(a.label == a.item.gold_label for a in gold.select_related("item"))
        assert (by_name[user.username]["gold_answers"], by_name[user.username]["gold_correct"]) == (gold.count(), right)
    careless = by_name[labelers[-1].username]
    assert careless["unreliable"] and "gold accuracy" in careless["reasons"][0]
    assert not by_name[labelers[0].username]["unreliable"]
    assert not report.passes
    assert any(labelers[-1].username in reason for reason in report.reasons)
    assert by_name[labelers[0].username]["median_seconds"] is not None


@pytest.mark.django_db
def test_perfect_labelers_pass_qc(tmp_path, engineer):
    project, _ = answered_project(tmp_path, engineer, accuracies=(1.0, 1.0, 1.0), n=45)
    report = qc.compute(project)
    assert report.passes, report.reasons
    assert report.data["alpha"] == 1.0 and report.data["fleiss_kappa"] == 1.0
    assert all(label["agreement"] == 1.0 for label in report.data["labels"])


@pytest.mark.django_db(transaction=True)
def test_the_qc_job_runs_on_the_monitoring_queue_in_a_real_worker(tmp_path, redis):
    from tests.conftest import make_user

    engineer = make_user("erin-engineer", "ml_engineer")
    project, labelers = answered_project(tmp_path, engineer, accuracies=(0.9, 0.9), n=30, overlap=2)
    job = project.schedule_qc(engineer)
    assert job.queue == "monitoring"
    assert project.schedule_qc(engineer) is None  # one waiting computation is enough
    log = run_burst(tmp_path, "monitoring")
    job = Job.objects.get(pk=job.pk)
    assert job.status == "succeeded", log
    report = QCReport.objects.get(project=project)
    assert job.result["report"] == report.pk and report.job_id == job.pk
    assert project.qc_is_current(report)
    project.assignments.filter(state="answered").first().undo()
    assert not project.qc_is_current(report)  # an undo makes it stale
    assert project.schedule_qc(engineer, min_interval=3600) is None  # automatic scheduling waits its turn
    assert project.schedule_qc(engineer) is not None  # the Recompute button does not


@pytest.mark.django_db
def test_the_qc_page_shows_the_numbers_and_charts_to_a_viewer(tmp_path, client, engineer, viewer):
    project, _ = answered_project(tmp_path, engineer, n=45)
    report = qc.compute(project)
    client_for(client, viewer)
    page = client.get(f"/labeling/{project.pk}/qc").content.decode()
    for chart in ("qc-chart-annotators", "qc-chart-kappa", "qc-chart-confusion", "qc-chart-answers"):
        assert f'id="{chart}"' in page
    assert str(report.data["alpha"]) in page
    assert "Recompute now" not in page  # viewers read statistics only
