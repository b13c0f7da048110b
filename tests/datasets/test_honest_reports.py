"""Honest reports: a version's pages show what each check found, or "not checked" and why
where the check did not run on its rows — never a default 0; and a redacted child's PII
report names its own rows, in every batch."""
import re
from collections import Counter

import pytest

from lifecycle.datasets import ingest, operations, pipeline, versions
from lifecycle.datasets.models import Dataset, DatasetVersion
from lifecycle.datasets.readers import ColumnMapping
from lifecycle.datasets.splits import SplitOptions
from tests.datasets.files import write_jsonl
from tests.datasets.test_child_versions import import_synthetic as import_synthetic_rows

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


def import_synthetic(tmp_path, engineer, n=300, **options):
    return import_synthetic_rows(tmp_path, engineer, n=n, **options)


def page_of(client, version):
    response = client.get(version.get_absolute_url())
    assert response.status_code == 200
    return response.content.decode()


def numbers_before(phrase, page):
    """The numbers the page puts right before `phrase` ("3 near-duplicate pairs")."""
    return re.findall(rf"(\d+) {re.escape(phrase)}", page)


# --- the redacted child's row numbers ------------------------------------------------------


def secret_rows():
    """Instruction pairs, more than one read batch of them; two rows past the first batch hold
    a secret that only prompt and response together show (a keyword in the prompt, the hex
    token in the response): each is redacted on its own, so the child's scan still finds it."""
    first, second = versions.READ_BATCH + 500, versions.READ_BATCH + 700
    rows = [{"instruction": f"question {i} about parcel {i * 7919 % 100_003}", "output": f"answer {i * 31 % 9973}"}
            for i in range(versions.READ_BATCH + 1000)]
    for row in (first, second):
        rows[row] = {"instruction": f"question {row}: please keep my api token",
                     "output": f"{row:08x}a1b2c3d4e5f60718293a4b5c"}
    return rows, [first, second]


def test_a_redacted_childs_pii_report_names_its_rows_past_the_first_batch(eng_client, tmp_path):
    rows, secrets = secret_rows()
    dataset = Dataset.create(None, slug="pairs", name="Pairs", task=Dataset.Task.SFT, pii_policy="redact")
    options = ingest.Options.for_dataset(dataset, ColumnMapping({"prompt": "instruction", "response": "output"}), "reject")
    raw, child = pipeline.upload(dataset, str(write_jsonl(tmp_path / "pairs.jsonl", rows)), "jsonl", options)
    assert [e["row"] for e in raw.pii_report["examples"]["SECRET"]] == secrets
    assert child.operation == "redact" and child.pii_status == "found"
    assert child.pii_report["rows_with_pii"] == 2 and child.pii_report["rows_scanned"] == len(rows)
    assert [e["row"] for e in child.pii_report["examples"]["SECRET"]] == secrets
    assert [e.row for e in child.examples.filter(has_pii=True)] == secrets
    page = page_of(eng_client, child)
    assert "2 rows hold personal data." in page
    assert "As found in v1, before its PII was redacted." in page  # its duplicates are v1's


# --- an upload checks everything -----------------------------------------------------------


def test_an_upload_reports_every_check_and_its_page_shows_numbers(eng_client, engineer, tmp_path):
    version = import_synthetic(tmp_path, engineer, pii_rate=0.2, dup_rate=0.2)
    assert version.not_checked == {"pii": {}, "dedup": {}, "leakage": {}}
    pii, dups, leak = version.pii_report, version.dedup_report, version.leakage_report
    assert pii["rows_with_pii"] > 0 and dups["exact_duplicate_rows"] > 0 and dups["near_duplicate_pairs"] > 0
    page = page_of(eng_client, version)
    assert "not checked" not in page
    assert f"{pii['rows_with_pii']} rows hold personal data." in page
    assert f"<li>{dups['exact_duplicate_rows']} exact duplicate rows</li>" in page
    assert f"<li>{dups['near_duplicate_pairs']} near-duplicate pairs</li>" in page
    assert f"<li>{dups['removable_rows']} rows removable</li>" in page
    assert numbers_before("near-duplicate pairs across splits", page) == [str(leak["near_duplicates"]["pairs"])]
    assert numbers_before("texts duplicated across splits", page) == [str(leak["exact_duplicates"]["keys"])]


def test_children_of_other_apps_keep_what_their_parent_checked(eng_client, engineer, tmp_path):
    # Frozen labels and the retrain export are derive_version children with inherited reports.
    parent = import_synthetic(tmp_path, engineer, dup_rate=0.2)
    frozen = operations.derive_version(parent, DatasetVersion.Operation.RELABEL, lambda batch: batch)
    assert frozen.not_checked == {"pii": {}, "dedup": {}, "leakage": {}}
    assert "not checked" not in page_of(eng_client, frozen)


# --- a split again -------------------------------------------------------------------------


def test_a_split_again_checks_its_near_duplicate_leakage_as_an_upload_does(eng_client, engineer, tmp_path):
    parent = import_synthetic(tmp_path, engineer, dup_rate=0.2)
    assert parent.dedup_report["near_duplicate_pairs"] > 0
    child = operations.resplit_version(parent, SplitOptions(seed=3))
    assert child.leakage_report["near_duplicates"]["pairs"] == 0  # whole components were kept together
    assert child.not_checked["leakage"] == {}
    page = page_of(eng_client, child)
    assert "0 near-duplicate pairs across splits" in page and "not checked" not in page
    # What the split again did not redo is still its parent's, and said as such.
    assert child.not_checked["dedup"] == {} and child.not_checked["pii"] == {}
    assert f"<li>{parent.dedup_report['near_duplicate_pairs']} near-duplicate pairs</li>" in page


def test_a_split_again_that_accepts_near_duplicates_counts_those_that_cross(engineer, tmp_path):
    parent = import_synthetic(tmp_path, engineer, dup_rate=0.3)
    child = operations.resplit_version(parent, SplitOptions(seed=0, keep_together="groups"))
    assert child.leakage_report["accepted"] == ["near_duplicates", "exact_duplicates"]
    assert child.leakage_report["near_duplicates"]["pairs"] > 0
    assert child.not_checked["leakage"] == {}


# --- removing duplicates -------------------------------------------------------------------


def test_removing_duplicates_counts_what_is_left_and_says_what_it_did_not_search(eng_client, engineer, tmp_path):
    parent = import_synthetic(tmp_path, engineer, dup_rate=0.3)
    child = operations.remove_duplicates(parent)
    report = child.dedup_report
    assert report["removed_rows"] == parent.row_count - child.row_count == parent.dedup_report["removable_rows"] > 0
    keys = Counter(child.examples.values_list("content_key", flat=True))
    assert report["exact_duplicate_rows"] == sum(count - 1 for count in keys.values())
    assert set(child.not_checked["dedup"]) == {"near_duplicate_pairs", "removable_rows"}
    assert set(child.not_checked["leakage"]) == {"near_duplicates"}
    page = page_of(eng_client, child)
    assert f"<li>{report['exact_duplicate_rows']} exact duplicate rows</li>" in page
    assert "Near-duplicate pairs: not checked — not searched for again: these are v1&#x27;s rows" in page
    assert "Rows removable: not checked — " in page
    assert "Near-duplicate pairs across splits: not checked — not searched for again" in page
    assert numbers_before("near-duplicate pairs", page) == [] and numbers_before("rows removable", page) == []
    assert "Remove duplicates into a child version" not in page


# --- the dataset page's cards --------------------------------------------------------------


def cards(page):
    return re.findall(r'<div class="big">([^<]*)</div><div class="muted">([^<]*)</div>', page)


def test_the_dataset_pages_cards_show_numbers_where_checked_and_not_checked_where_not(eng_client, engineer, tmp_path):
    parent = import_synthetic(tmp_path, engineer, pii_rate=0.2, dup_rate=0.3)
    shown = dict((label.split(" (")[0].split(":")[0], value) for value, label in cards(page_of(eng_client, parent.dataset)))
    assert shown["rows with PII"] == str(parent.pii_report["rows_with_pii"])
    assert shown["duplicate rows"] == str(parent.dedup_report["removable_rows"])

    operations.remove_duplicates(parent)
    shown = dict((label.split(" (")[0].split(":")[0], (value, label)) for value, label in cards(page_of(eng_client, parent.dataset)))
    value, label = shown["duplicate rows"]
    assert value == "not checked" and "were not put into duplicate sets again" in label
    assert shown["rows with PII"][0].isdigit()  # the PII scan is the parent's, of every row kept
