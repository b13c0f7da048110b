"""The ingest pipeline end to end on the real database: files in, immutable versions out."""
import json
import threading
from pathlib import Path

import pytest
from django.db import DatabaseError, connection, transaction

from lifecycle.core.models import AuditEvent
from lifecycle.datasets import ingest, operations, pipeline, splits
from lifecycle.datasets import rows as rows_analysis
from lifecycle.datasets.models import Dataset, DatasetVersion, Example
from lifecycle.datasets.readers import ColumnMapping
from lifecycle.datasets.synthetic import write_jsonl as write_synthetic
from lifecycle.datasets.versions import verify_version
from tests.datasets.files import write_binary, write_csv, write_jsonl, write_parquet

LABELS = ["billing", "shipping", "returns"]


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


def make_dataset(slug="support", **fields):
    fields.setdefault("name", slug.title())
    return Dataset.create(None, slug=slug, **fields)


def rows(n, *, start=0, labels=LABELS, group_every=1):
    return [{"text": f"message number {i} about {labels[i % len(labels)]} with words {i * 7919 % 1000}",
             "label": labels[i % len(labels)], "customer": f"c{i // group_every}"} for i in range(start, start + n)]


def run(dataset, path, fmt, mapping=None, on_error="reject"):
    options = ingest.Options.for_dataset(dataset, ColumnMapping(mapping or {}), on_error)
    return pipeline.upload(dataset, str(path), fmt, options)


def artifact_files(root):
    return sorted(p.name for p in Path(root).rglob("*") if p.is_file() and "tmp" not in p.parts)


# --- formats -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_jsonl_becomes_a_verified_version_with_examples(tmp_path):
    dataset = make_dataset()
    [version] = run(dataset, write_jsonl(tmp_path / "d.jsonl", rows(300, group_every=3)), "jsonl", {"group": "customer"})
    assert version.number == 1 and version.row_count == 300 and version.operation == "upload"
    assert version.examples.count() == 300
    assert sum(sum(c.values()) for c in version.manifest["counts"].values()) == 300
    assert version.manifest_sha256 == DatasetVersion.hash_manifest(version.manifest)
    assert verify_version(version) == []
    assert version.label_set == sorted(LABELS)
    dataset.refresh_from_db()
    assert dataset.label_set == sorted(LABELS)  # fixed by the first version
    example = version.examples.get(row=5)
    assert example.metadata == {} and example.group == "c1"
    assert AuditEvent.objects.filter(action="dataset_version.created", object_id=str(version.pk)).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("delimiter, newline, bom", [(",", "\n", False), (",", "\r\n", True), (";", "\n", False), ("\t", "\r\n", False)])
def test_csv_dialects_succeed(tmp_path, delimiter, newline, bom):
    table = [["body", "intent", "extra"]] + [[r["text"], r["label"], "x"] for r in rows(60)]
    path = write_csv(tmp_path / "d.csv", table, delimiter=delimiter, newline=newline, bom=bom)
    [version] = run(make_dataset(), path, "csv", {"text": "body", "label": "intent"})
    assert version.row_count == 60
    assert version.examples.get(row=0).metadata == {"extra": "x"}


@pytest.mark.django_db
def test_parquet_upload(tmp_path):
    data = rows(90)
    path = write_parquet(tmp_path / "d.parquet", {"text": [r["text"] for r in data], "label": [r["label"] for r in data]}, row_group_size=20)
    [version] = run(make_dataset(), path, "parquet")
    assert version.row_count == 90 and verify_version(version) == []


@pytest.mark.django_db
def test_instruction_pairs(tmp_path):
    data = [{"instruction": f"Summarise ticket {i}", "output": f"Ticket {i} is about a refund."} for i in range(40)]
    dataset = make_dataset(task=Dataset.Task.SFT)
    [version] = run(dataset, write_jsonl(tmp_path / "sft.jsonl", data), "jsonl", {"prompt": "instruction", "response": "output"})
    example = version.examples.get(row=3)
    assert (example.text, example.response) == ("Summarise ticket 3", "Ticket 3 is about a refund.")


# --- bad input: clear refusals, nothing half-made ------------------------------------------


def refused(dataset, path, fmt, match, mapping=None, on_error="reject", artifacts_root=None):
    before = artifact_files(artifacts_root) if artifacts_root else None
    with pytest.raises(ingest.IngestRejected, match=match):
        run(dataset, path, fmt, mapping, on_error)
    assert not DatasetVersion.objects.filter(dataset=dataset).exists()
    assert not Example.objects.exists()
    if artifacts_root:
        assert artifact_files(artifacts_root) == before


@pytest.mark.django_db
def test_empty_file(tmp_path, artifacts):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    refused(make_dataset(), path, "csv", "the file is empty", artifacts_root=artifacts)


@pytest.mark.django_db
def test_binary_file_named_csv(tmp_path, artifacts):
    refused(make_dataset(), write_binary(tmp_path / "x.csv"), "csv", "not a text file", artifacts_root=artifacts)


@pytest.mark.django_db
def test_jsonl_with_a_broken_line_is_rejected_or_dropped(tmp_path):
    lines = rows(10)[:5] + ['{"text": "broken", "label": '] + rows(10)[5:]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    dataset = make_dataset()
    refused(dataset, path, "jsonl", r"1 of 11 rows are invalid \(first: line 6: invalid JSON")
    [version] = run(dataset, path, "jsonl", on_error="drop")
    assert version.row_count == 10
    assert version.validation_report["row_errors"] == 1 and version.validation_report["errors"][0]["line"] == 6


@pytest.mark.django_db
def test_parquet_with_a_wrong_schema(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", {"message": ["a", "b"], "category": ["x", "y"]})
    refused(make_dataset(), path, "parquet", r"missing required columns: text \(from column 'text'\), label")


@pytest.mark.django_db
def test_missing_required_column_in_csv(tmp_path):
    path = write_csv(tmp_path / "d.csv", [["text"], ["hello"], ["there"]])
    refused(make_dataset(), path, "csv", "missing required columns: label")


@pytest.mark.django_db
def test_labels_mixing_numbers_and_text(tmp_path):
    data = [{"text": f"t{i}", "label": i % 3 if i % 2 else "refund"} for i in range(20)]
    refused(make_dataset(), write_jsonl(tmp_path / "d.jsonl", data), "jsonl", r"the label column mixes numbers \('1' on line 2\) and text")


@pytest.mark.django_db
def test_a_ten_megabyte_text_cell(tmp_path):
    data = rows(10)
    data[4]["text"] = "x" * (10 * 1024 * 1024)
    path = write_jsonl(tmp_path / "d.jsonl", data)
    dataset = make_dataset(max_text_chars=5000)
    refused(dataset, path, "jsonl", "line 5: .*over the limit of 5,000")
    [version] = run(dataset, path, "jsonl", on_error="drop")
    assert version.row_count == 9


@pytest.mark.django_db
def test_empty_text_and_labels_outside_the_label_set(tmp_path):
    data = rows(9) + [{"text": "  ", "label": "billing"}, {"text": "what?", "label": "marketing"}]
    dataset = make_dataset(label_set=LABELS)
    [version] = run(dataset, write_jsonl(tmp_path / "d.jsonl", data), "jsonl", on_error="drop")
    reasons = [e["reason"] for e in version.validation_report["errors"]]
    assert reasons == ["text is empty", "label 'marketing' is not in the dataset's label set"]


@pytest.mark.django_db
def test_too_many_labels_and_a_single_label(tmp_path):
    many = [{"text": f"t{i}", "label": f"l{i}"} for i in range(12)]
    refused(make_dataset(max_labels=10), write_jsonl(tmp_path / "m.jsonl", many), "jsonl", "12 distinct labels, more than the dataset's limit of 10")
    one = [{"text": f"t{i}", "label": "only"} for i in range(12)]
    refused(make_dataset("other"), write_jsonl(tmp_path / "o.jsonl", one), "jsonl", "only one label in the whole file")


@pytest.mark.django_db
def test_html_and_formula_cells_are_stored_exactly(tmp_path):
    tricky = 'a "quoted", comma\nnew line, back\\slash\ttab, ünïcødé 🚚, \\N and NULL'
    data = rows(6) + [{"text": "<img src=x onerror=alert(1)></script>", "label": "billing"},
                      {"text": "=HYPERLINK(\"http://x\")", "label": "@evil"},
                      {"text": tricky, "label": "billing", "note": {"nested": [1, "two"]}}]
    [version] = run(make_dataset(), write_jsonl(tmp_path / "d.jsonl", data), "jsonl")
    assert version.examples.get(row=6).text == "<img src=x onerror=alert(1)></script>"
    assert version.examples.get(row=7).label == "@evil"
    assert version.examples.get(row=8).text == tricky  # through COPY … CSV unchanged
    assert version.examples.get(row=8).metadata == {"note": {"nested": [1, "two"]}}
    assert verify_version(version) == []


# --- PII policies --------------------------------------------------------------------------


def pii_rows():
    return rows(20) + [{"text": "mail me at jane.doe@example.com or call +44 20 7946 0958", "label": "billing"},
                       {"text": "card 4111 1111 1111 1111 please refund", "label": "returns"}]


@pytest.mark.django_db
def test_pii_block_policy_makes_no_version(tmp_path, artifacts):
    dataset = make_dataset(pii_policy=Dataset.PiiPolicy.BLOCK)
    refused(dataset, write_jsonl(tmp_path / "d.jsonl", pii_rows()), "jsonl", r"PII found in 2 rows \(1 CREDIT_CARD, 1 EMAIL, 1 PHONE\)", artifacts_root=artifacts)


@pytest.mark.django_db
def test_pii_redact_policy_makes_a_redacted_child(tmp_path):
    dataset = make_dataset(pii_policy=Dataset.PiiPolicy.REDACT)
    raw, redacted = run(dataset, write_jsonl(tmp_path / "d.jsonl", pii_rows()), "jsonl")
    assert raw.pii_status == "found" and raw.pii_report["rows_with_pii"] == 2
    assert raw.pii_report["counts"] == {"CREDIT_CARD": 1, "EMAIL": 1, "PHONE": 1}
    assert "jane.doe@example.com" not in json.dumps(raw.pii_report)  # examples are masked
    assert redacted.parent_id == raw.pk and redacted.operation == "redact" and redacted.pii_status == "redacted"
    assert redacted.examples.get(row=20).text == "mail me at <EMAIL> or call <PHONE>"
    assert redacted.examples.get(row=21).text == "card <CREDIT_CARD> please refund"
    assert not redacted.examples.filter(has_pii=True).exists()
    assert verify_version(redacted) == []
    # 22 rows in 3 labels leave validation and test empty, which blocks both; the PII blocks only the raw one.
    assert any("PII" in b for b in raw.training_blockers()) and not any("PII" in b for b in redacted.training_blockers())


@pytest.mark.django_db
def test_pii_allow_policy_needs_an_approvers_sign_off(tmp_path):
    from lifecycle.datasets.models import PiiSignOff
    from tests.conftest import make_user

    dataset = make_dataset(pii_policy=Dataset.PiiPolicy.ALLOW)
    [version] = run(dataset, write_jsonl(tmp_path / "d.jsonl", pii_rows()), "jsonl")
    assert version.needs_pii_signoff and any("PII" in b for b in version.training_blockers())
    PiiSignOff.sign(version, make_user("alex", "approver"), "customer consented to research use")
    version = DatasetVersion.objects.get(pk=version.pk)
    assert not any("PII" in b for b in version.training_blockers())  # its empty splits still block it (22 rows)
    assert AuditEvent.objects.filter(action="dataset_version.pii_signed_off", actor="alex").exists()


# --- dedup, splits, leakage ------------------------------------------------------------------


@pytest.mark.django_db
def test_planted_duplicates_are_reported_and_removable(tmp_path):
    data = rows(200)
    data += [dict(data[10]), dict(data[11], text=data[11]["text"].upper()), dict(data[12], text=data[12]["text"] + " !")]
    [version] = run(make_dataset(), write_jsonl(tmp_path / "d.jsonl", data), "jsonl")
    report = version.dedup_report
    assert report["exact_duplicate_rows"] == 2  # the copy and the upper-cased copy normalize the same
    assert report["near_duplicate_pairs"] >= 1 and report["removable_rows"] == 3
    # duplicates share a split (no leakage from them)
    for original, copy in ((10, 200), (11, 201), (12, 202)):
        assert version.examples.get(row=original).split == version.examples.get(row=copy).split
    assert not version.has_leakage
    child = operations.remove_duplicates(version)
    assert child.row_count == 200 and child.parent_id == version.pk and child.operation == "dedup"
    assert not child.examples.filter(duplicate_cluster__isnull=False).exists()


@pytest.mark.django_db
def test_groups_never_cross_splits_and_labels_stay_stratified(tmp_path):
    write_synthetic(tmp_path / "s.jsonl", 3000, seed=3)
    dataset = make_dataset()
    versions = run(dataset, tmp_path / "s.jsonl", "jsonl", {"group": "customer_id", "timestamp": "created_at"})
    version = versions[0]
    per_group = version.examples.values("group").distinct().count()
    split_groups = {(g, s) for g, s in version.examples.values_list("group", "split")}
    assert len(split_groups) == per_group  # each group in exactly one split
    assert version.leakage_report["groups"]["groups"] == 0 and not version.has_leakage
    assert version.leakage_report["near_duplicates"]["pairs"] == 0
    counts = version.manifest["counts"]
    total = {label: sum(counts[s].get(label, 0) for s in counts) for label in version.label_set}
    for split in ("train", "validation", "test"):
        size = sum(counts[split].values())
        assert 0.05 < size / version.row_count < 0.9
        for label, count in counts[split].items():
            assert abs(count / size - total[label] / version.row_count) < 0.03


@pytest.mark.django_db
def test_same_seed_same_split_and_resplit_changes_it(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", rows(300))
    first = run(make_dataset("a"), path, "jsonl")[0]
    second = run(make_dataset("b"), path, "jsonl")[0]
    assert list(first.examples.values_list("split", flat=True)) == list(second.examples.values_list("split", flat=True))
    assert first.content_sha256 == second.content_sha256
    child = operations.resplit_version(first, splits.SplitOptions(seed=5))
    assert child.row_count == 300 and child.operation == "resplit" and child.content_sha256 != first.content_sha256
    assert sorted(child.examples.values_list("row_sha256", flat=True)) == sorted(first.examples.values_list("row_sha256", flat=True))


@pytest.mark.django_db
def test_given_splits_with_planted_leakage_are_flagged(tmp_path):
    data = [dict(r, split="train") for r in rows(60)]
    data += [dict(data[0], split="test"),  # an exact duplicate across train and test
             {"text": "a brand new message for the test split", "label": "billing", "customer": "c3", "split": "test"}]
    [version] = run(make_dataset(), write_jsonl(tmp_path / "d.jsonl", data), "jsonl", {"group": "customer", "split": "split"})
    report = version.leakage_report
    assert report["splits_from"] == "given" and version.has_leakage
    assert report["exact_duplicates"]["keys"] == 1
    assert report["groups"]["groups"] == 2  # c0 (the copy) and c3 sit in train and test
    assert not version.usable_for_training


# --- immutability ------------------------------------------------------------------------


@pytest.mark.django_db
def test_versions_and_examples_refuse_updates(tmp_path):
    [version] = run(make_dataset(), write_jsonl(tmp_path / "d.jsonl", rows(20)), "jsonl")
    with pytest.raises(DatabaseError, match="immutable"):
        with transaction.atomic():
            Example.objects.filter(version=version, row=0).update(label="shipping")
    with pytest.raises(DatabaseError, match="immutable"):
        with transaction.atomic():
            DatasetVersion.objects.filter(pk=version.pk).update(row_count=1)
    with pytest.raises(RuntimeError, match="immutable"):
        version.save()


def raw(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.django_db
def test_tampering_is_detected_by_hash(tmp_path, artifacts):
    [version] = run(make_dataset(), write_jsonl(tmp_path / "d.jsonl", rows(20)), "jsonl")
    raw("SET CONSTRAINTS ALL IMMEDIATE")  # flush the deferred foreign-key checks first
    raw("ALTER TABLE datasets_example DISABLE TRIGGER USER")
    raw("UPDATE datasets_example SET label = 'returns' WHERE version_id = %s AND row = 1", [version.pk])
    raw("ALTER TABLE datasets_example ENABLE TRIGGER USER")
    assert verify_version(version) == ["an example row in the database does not match its hash"]
    path = next(p for p in Path(artifacts).rglob(version.rows_sha256))
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert verify_version(version)[0].startswith("rows artifact unreadable: ArtifactCorrupt")
    version.manifest["row_count"] = 1
    assert "the manifest does not match its hash" in verify_version(version)


@pytest.mark.django_db(transaction=True)
def test_two_uploads_at_once_get_well_defined_numbers_and_parents(tmp_path):
    dataset = make_dataset()
    paths = [write_jsonl(tmp_path / f"{i}.jsonl", rows(150, start=i * 1000)) for i in range(2)]
    errors = []

    def upload(path):
        try:
            run(dataset, path, "jsonl")
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=upload, args=(p,)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    first, second = DatasetVersion.objects.filter(dataset=dataset).order_by("number")
    assert (first.number, second.number) == (1, 2)
    assert first.parent_id is None and second.parent_id == first.pk
    assert first.examples.count() == second.examples.count() == 150
    assert verify_version(first) == [] and verify_version(second) == []


@pytest.mark.django_db
def test_diff_reports_added_removed_and_relabeled(tmp_path):
    from lifecycle.datasets import diff

    dataset = make_dataset()
    base = rows(30)
    [old] = run(dataset, write_jsonl(tmp_path / "a.jsonl", base), "jsonl")
    changed = base[2:] + rows(4, start=500)
    changed[0] = dict(changed[0], label="shipping" if changed[0]["label"] != "shipping" else "billing")
    [new] = run(dataset, write_jsonl(tmp_path / "b.jsonl", changed), "jsonl")
    result = diff.compare(old, new)
    assert (result["added_count"], result["removed_count"], result["edited_count"]) == (4, 2, 1)
    assert result["pages"]["edited"].rows[0].old.label == base[2]["label"]
    assert sum(result["new_counts"]) - sum(result["old_counts"]) == 2


@pytest.mark.django_db
def test_split_by_time_puts_train_before_validation_before_test(tmp_path):
    data = [dict(r, when=f"2026-03-{1 + i % 28:02d}T{i % 24:02d}:00:00Z") for i, r in enumerate(rows(300))]
    data.append({"text": "no time on this one", "label": "billing"})
    dataset = make_dataset()
    options = ingest.Options.for_dataset(dataset, ColumnMapping({"timestamp": "when"}), "drop", by_time=True)
    [version] = pipeline.upload(dataset, str(write_jsonl(tmp_path / "d.jsonl", data)), "jsonl", options)
    assert version.validation_report["errors"] == [{"line": 301, "reason": "timestamp is empty, and the split is by time"}]
    newest = {split: max(version.examples.filter(split=split).values_list("timestamp", flat=True)) for split in (0, 1)}
    oldest = {split: min(version.examples.filter(split=split).values_list("timestamp", flat=True)) for split in (1, 2)}
    assert newest[0] <= oldest[1] and newest[1] <= oldest[2]
    assert version.leakage_report["splits_from"] == "by time"
    assert version.leakage_report["time_overlap"]["overlap"] is False


@pytest.mark.django_db
def test_helper_processes_give_the_same_version_as_one_process(tmp_path, settings):
    write_synthetic(tmp_path / "s.jsonl", 12_000, seed=5, pii_rate=0.1)
    mapping = {"group": "customer_id", "timestamp": "created_at"}
    settings.DATASET_PARALLEL_MIN_BYTES = 10**12
    [alone] = run(make_dataset("alone", pii_policy="allow"), tmp_path / "s.jsonl", "jsonl", mapping)
    settings.DATASET_PARALLEL_MIN_BYTES = 0  # every file goes to the helpers
    [helped] = run(make_dataset("helped", pii_policy="allow"), tmp_path / "s.jsonl", "jsonl", mapping)
    assert helped.content_sha256 == alone.content_sha256
    assert helped.pii_report == alone.pii_report and helped.dedup_report == alone.dedup_report
    assert verify_version(helped) == []


def test_group_ids_are_the_same_in_every_process():
    # The seeded split depends on group ids: a salted hash (Python's hash()) would make the
    # same seed give different splits in different worker processes.
    assert rows_analysis.group_id("customer-42") == 3083912090939547699  # pinned: blake2b-64, low 63 bits
