"""A split that cannot meet its fractions says so and why, keeps its version out of training,
and offers ways out that work (tested on small templated data, where near duplicates and
groups join almost every row into one unit)."""
import io
import json

import numpy as np
import pytest
from django.core.management import call_command

from lifecycle.core.models import Job
from lifecycle.datasets.models import Dataset, DatasetVersion
from lifecycle.datasets.splits import feasibility, leakage_report
from lifecycle.runs.forms import RunForm, usable_versions
from lifecycle.runs.models import Run
from tests.datasets.test_web import perform_queued_jobs

# Transactional: the job's heartbeat thread must see the job row, or a slow ingest on a
# busy machine reads as a job that left `running` and is cancelled.
pytestmark = pytest.mark.django_db(transaction=True)

TEMPLATES = {
    "refund": "please refund the payment for order {n}",
    "shipping": "where is the parcel for order {n}",
    "address": "please change the delivery address on order {n}",
}


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


def templated_rows(n=200, customers=50, **extra):
    """The issue's upload: 3 balanced labels, 50 customers, one template per label with an order number."""
    labels = list(TEMPLATES)
    return [{"text": TEMPLATES[labels[i % 3]].format(n=10000 + i), "label": labels[i % 3],
             "customer": f"customer-{i % customers}", **{k: v(i) for k, v in extra.items()}} for i in range(n)]


def import_rows(tmp_path, rows, engineer, slug="orders"):
    Dataset.create(engineer, slug=slug, name="Orders")
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    call_command("dataset_import", str(path), dataset=slug, map="group=customer", stdout=io.StringIO())
    return DatasetVersion.objects.get(dataset__slug=slug, number=1)


def split_sizes(version):
    return [version.examples.filter(split=s).count() for s in range(3)]


def groups_intact(version):
    per_group = {}
    for group, split in version.examples.values_list("group", "split"):
        per_group.setdefault(group, set()).add(split)
    return all(len(s) == 1 for s in per_group.values())


# ---------------------------------------------------------------- the report (no database)


def test_an_all_train_split_falls_short_and_says_what_joined_the_rows():
    groups = np.repeat(np.arange(50), 4)  # 50 groups of 4 rows
    near = np.stack([np.zeros(199, np.int64), np.arange(1, 200)], axis=1)  # every row near row 0
    report = feasibility(np.zeros(200, np.int8), joins={"groups": groups, "near_duplicates": near})
    assert report["meets_fractions"] is False and report["short"] == ["validation", "test"]
    assert report["rows"] == {"train": 200, "validation": 0, "test": 0} and report["targets"]["validation"] == 20
    units = report["units"]
    assert units["count"] == 1 and units["largest"] == 200
    assert set(units["joined_by"]) == {"groups", "near_duplicates"}
    assert units["largest_alone"] == {"groups": 4, "near_duplicates": 200}


def test_a_split_near_its_targets_meets_them_and_explains_nothing():
    splits = np.array([0] * 86 + [1] * 9 + [2] * 9, dtype=np.int8)
    report = leakage_report(splits, exact_keys=np.arange(104), groups=np.arange(104) // 2)
    assert report["feasibility"]["meets_fractions"] is True and "units" not in report["feasibility"]
    # Half its share is the line where 20 rows or more are due: 40 of 100 falls short, 60 does not ...
    assert feasibility(np.array([0] * 920 + [1] * 40 + [2] * 40, dtype=np.int8))["short"] == ["validation", "test"]
    assert feasibility(np.array([0] * 880 + [1] * 60 + [2] * 60, dtype=np.int8))["meets_fractions"] is True
    # ... and below, only an empty split: small data with many labels gives small splits a row or two less.
    assert feasibility(np.array([0] * 86 + [1] * 3 + [2] * 1, dtype=np.int8))["meets_fractions"] is True
    assert feasibility(np.array([0] * 87 + [1] * 3, dtype=np.int8))["short"] == ["test"]


def test_tiny_data_is_not_held_to_a_share_below_one_row():
    assert feasibility(np.zeros(5, np.int8))["meets_fractions"] is True  # 0.5 rows are due to validation
    assert feasibility(np.zeros(10, np.int8))["short"] == ["validation", "test"]


# ---------------------------------------------------------------- the upload


def test_the_templated_upload_is_not_usable_and_its_page_says_why(eng_client, engineer, tmp_path):
    version = import_rows(tmp_path, templated_rows(), engineer)
    assert split_sizes(version) == [200, 0, 0]
    assert version.split_meets_fractions is False and not version.usable_for_training
    units = version.split_feasibility["units"]
    assert units["largest"] == 200 and "groups" in units["joined_by"] and "near_duplicates" in units["joined_by"]
    assert any("cannot meet its fractions" in b for b in version.training_blockers())
    page = eng_client.get("/datasets/orders/v1/").content.decode()
    assert "Splits seeded (seed 0): train 200." in page  # no trailing ", ."
    assert "The split cannot meet its fractions" in page and "validation 0 of 20 rows" in page
    assert "joined by groups and near duplicates" in page and "groups 4 rows" in page
    for way in ("Split by groups only", "Treat near duplicates as separate rows", "Split again with seed 1"):
        assert way in page
    assert "not usable" in page
    assert version.pk not in dict(usable_versions())
    api = eng_client.get("/api/v1/datasets/orders/versions/1").json()
    assert api["usable_for_training"] is False


def test_the_run_form_refuses_a_posted_version_that_falls_short_and_says_why(engineer, tmp_path):
    version = import_rows(tmp_path, templated_rows(), engineer)
    form = RunForm({"dataset_version": str(version.pk)})
    assert not form.is_valid()
    message = " ".join(form.errors["dataset_version"])
    assert "orders v1 may not be used for training" in message and "cannot meet its fractions" in message
    form = RunForm({"dataset_version": "999999"})  # an unknown version keeps Django's message
    assert not form.is_valid() and "valid choice" in " ".join(form.errors["dataset_version"])


def test_the_runs_api_refuses_a_version_that_falls_short_and_queues_nothing(eng_client, engineer, tmp_path):
    version = import_rows(tmp_path, templated_rows(), engineer)
    runs_before, jobs_before = Run.objects.count(), Job.objects.count()
    response = eng_client.post("/api/v1/runs", {"dataset_version": version.pk, "base_model": "all-MiniLM-L6-v2",
                                                "task": "classification", "method": "lora", "epochs": 1},
                               content_type="application/json")
    assert response.status_code == 400
    assert "cannot meet its fractions" in json.dumps(response.json())
    assert (Run.objects.count(), Job.objects.count()) == (runs_before, jobs_before)


@pytest.mark.parametrize("keep_together, accepted", [("groups", ["near_duplicates", "exact_duplicates"]),
                                                     ("groups_exact", ["near_duplicates"])])
def test_a_way_out_gives_a_split_that_meets_its_fractions(eng_client, engineer, tmp_path, keep_together, accepted,
                                                          django_capture_on_commit_callbacks):
    version = import_rows(tmp_path, templated_rows(), engineer)
    with django_capture_on_commit_callbacks(execute=True):
        response = eng_client.post("/datasets/orders/v1/resplit", {"seed": 0, "keep_together": keep_together})
    assert response.status_code == 302 and response["Location"].startswith("/jobs/")
    perform_queued_jobs()
    child = DatasetVersion.objects.get(dataset=version.dataset, number=2)
    assert child.parent == version and child.operation == "resplit"
    train, validation, test = split_sizes(child)
    assert (train, validation, test) == (160, 20, 20) and groups_intact(child)
    assert child.split_meets_fractions is True and child.usable_for_training
    assert child.leakage_report["accepted"] == accepted and child.leakage_report["duplicate_sets"]["pairs"] > 0
    assert child.split_options == {"seed": 0, "keep_together": keep_together, "column": ""}
    assert child.pk in dict(usable_versions())
    page = eng_client.get("/datasets/orders/v2/").content.decode()
    assert "The split cannot meet its fractions" not in page and "accepted: near duplicates treated as separate rows" in page
    assert "train 160, validation 20, test 20." in page


def test_another_seed_is_a_real_try_and_still_says_so_when_it_cannot_help(eng_client, engineer, tmp_path):
    import_rows(tmp_path, templated_rows(), engineer)
    eng_client.post("/datasets/orders/v1/resplit", {"seed": 1})
    perform_queued_jobs()
    child = DatasetVersion.objects.get(number=2)
    assert child.split_options["seed"] == 1 and child.split_meets_fractions is False
    assert "split again with seed 2" in eng_client.get("/datasets/orders/v2/").content.decode().lower()


def test_a_dedup_child_of_a_short_split_is_not_usable_either(eng_client, engineer, tmp_path):
    # 50 templated rows, one per customer, join 150 distinct ones through the customers.
    rng = np.random.default_rng(4)
    words = "account balance card delivery email invoice login order parcel password refund shipment".split()
    rows = templated_rows()
    for row in rows[50:]:
        row["text"] = " ".join(rng.choice(words, size=10)) + f" {rng.integers(1e9)}"
    version = import_rows(tmp_path, rows, engineer)
    assert version.split_meets_fractions is False
    eng_client.post("/datasets/orders/v1/dedup")
    perform_queued_jobs()
    child = DatasetVersion.objects.get(number=2)
    assert child.operation == "dedup" and 100 < child.row_count < 200 and split_sizes(child)[1:] == [0, 0]
    assert child.split_meets_fractions is False and not child.usable_for_training


def test_splits_from_a_column_of_the_data(eng_client, engineer, tmp_path):
    # Customers 0-39 train, 40-44 validation, 45-49 test.
    fold = lambda i: "train" if i % 50 < 40 else ("validation" if i % 50 < 45 else "test")  # noqa: E731
    version = import_rows(tmp_path, templated_rows(fold=fold), engineer)
    assert version.split_columns() == ["fold"]
    page = eng_client.get("/datasets/orders/v1/").content.decode()
    assert "Take the splits from the column “fold”" in page
    eng_client.post("/datasets/orders/v1/resplit", {"seed": 0, "column": "fold"})
    perform_queued_jobs()
    child = DatasetVersion.objects.get(number=2)
    assert split_sizes(child) == [160, 20, 20] and groups_intact(child)
    assert child.split_meets_fractions is None  # the data's own split: no fractions to meet
    # The templated texts are near duplicates of each other across the given splits: leakage, said so.
    assert child.has_leakage and not child.usable_for_training
    page = eng_client.get("/datasets/orders/v2/").content.decode()
    assert "given by the column “fold”" in page and "The data gave its own splits" in page
    eng_client.post("/datasets/orders/v1/resplit", {"seed": 0, "column": "fold", "keep_together": "groups_exact"})
    perform_queued_jobs()
    accepting = DatasetVersion.objects.get(number=3)
    assert split_sizes(accepting) == [160, 20, 20] and accepting.usable_for_training


def test_a_column_that_does_not_name_a_split_for_every_row_makes_nothing(eng_client, engineer, tmp_path):
    folds = ["train"] * 8 + ["validation", "holdout"]
    import_rows(tmp_path, templated_rows(fold=lambda i: folds[i % 10]), engineer)
    eng_client.post("/datasets/orders/v1/resplit", {"seed": 0, "column": "fold"})
    perform_queued_jobs()
    job = Job.objects.get(task="lifecycle.datasets.tasks.derive_version")
    assert job.status == "failed" and "names no split" in job.error and "row 9" in job.error
    assert DatasetVersion.objects.count() == 1


@pytest.mark.parametrize("fields, message", [
    ({"seed": 0, "keep_together": "nothing"}, "Choose what to keep together"),
    ({"seed": 0, "column": "customer"}, "That column does not give splits"),
    ({"seed": -1}, "The seed must be a whole number"),
])
def test_bad_split_options_are_refused_with_nothing_queued(eng_client, engineer, tmp_path, fields, message):
    import_rows(tmp_path, templated_rows(), engineer)
    response = eng_client.post("/datasets/orders/v1/resplit", fields, follow=True)
    assert message in response.content.decode()
    assert not Job.objects.filter(task="lifecycle.datasets.tasks.derive_version").exists()
    assert DatasetVersion.objects.count() == 1
