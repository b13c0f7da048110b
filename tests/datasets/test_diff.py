"""The version diff: rows matched by identity within a family (redaction → edits, dedup →
removals, frozen labels → label edits, a new split → split edits), by content between two
uploads; paged on the server; the changed words marked, and escaped. On PostgreSQL (the
suite's database) and on SQLite (a subprocess on its own file)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.core.artifacts import get_store
from lifecycle.datasets import diff, ingest, operations, pipeline, splits
from lifecycle.datasets.models import Dataset, RowKeys
from lifecycle.datasets.readers import ColumnMapping
from tests.conftest import make_user
from tests.datasets.files import write_jsonl

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["billing", "shipping", "returns"]
PII_ROWS = (3, 10, 17, 25, 33, 41, 48, 56, 64, 72, 79)  # 11 rows with an e-mail address
DUPLICATE_ROWS = (20, 21, 50)  # exact copies of rows 2, 5 and 9


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


def rows(n=90, start=0):
    """Distinct messages (no two near each other), PII in PII_ROWS, exact copies at DUPLICATE_ROWS."""
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
    made = []
    for i in range(start, start + n):
        text = (f"message {i}: {words[i % 14]} {words[(i * 5) % 14]} {words[(i * 3) % 14]} order {i * 7919 % 100000}")
        if i in PII_ROWS:
            text += f" write to person{i}@example.com please"
        made.append({"text": text, "label": LABELS[i % 3]})
    for copy, source in zip(DUPLICATE_ROWS, (2, 5, 9)):
        if start <= copy < start + n and start <= source < start + n:
            made[copy - start] = dict(made[source - start])
    return made


def upload(dataset, tmp_path, data, name="d.jsonl"):
    options = ingest.Options.for_dataset(dataset, ColumnMapping({}), "reject")
    return pipeline.upload(dataset, str(write_jsonl(tmp_path / name, data)), "jsonl", options)


def family(tmp_path):
    """v1 the upload (PII found), v2 its redacted child, v3 v1 without duplicates."""
    dataset = Dataset.create(None, slug="support", name="Support", pii_policy="redact")
    raw, redacted = upload(dataset, tmp_path, rows())
    return raw, redacted, operations.remove_duplicates(raw)


def counts(result):
    return result["edited_count"], result["added_count"], result["removed_count"]


def rows_of(result, kind):
    page = result["pages"][kind].rows
    return [(e.old.row, e.new.row) for e in page] if kind == diff.EDITED else [e.row for e in page]


# --- each kind of change ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_redaction_is_eleven_edits_with_the_changed_words_marked(tmp_path):
    raw, redacted, _ = family(tmp_path)
    result = diff.compare(raw, redacted)
    assert result["match_by"] == "identity"
    assert counts(result) == (11, 0, 0)
    assert rows_of(result, diff.EDITED) == [(row, row) for row in PII_ROWS]
    before, after = result["pages"][diff.EDITED].rows[0].text
    assert before.endswith("write to <del>person3@example.com</del> please")
    assert after.endswith("write to <ins>&lt;EMAIL&gt;</ins> please")


@pytest.mark.django_db
def test_a_dedup_child_is_the_duplicates_removed_and_nothing_else(tmp_path):
    raw, _, deduped = family(tmp_path)
    assert deduped.row_count == 90 - len(DUPLICATE_ROWS)  # every row after row 20 moved up
    result = diff.compare(raw, deduped)
    assert result["match_by"] == "identity"
    assert counts(result) == (0, 0, 3)
    assert rows_of(result, diff.REMOVED) == list(DUPLICATE_ROWS)


@pytest.mark.django_db
def test_two_children_of_one_upload_compare_by_identity_too(tmp_path):
    _, redacted, deduped = family(tmp_path)
    result = diff.compare(redacted, deduped)
    # The dedup child kept the e-mail addresses the redacted one replaced; rows 79 and on moved up by 3.
    assert counts(result) == (11, 0, 3)
    assert rows_of(result, diff.EDITED)[-1] == (79, 76)
    assert rows_of(result, diff.REMOVED) == list(DUPLICATE_ROWS)


@pytest.mark.django_db
def test_a_new_split_shows_the_rows_that_moved(tmp_path):
    raw, _, _ = family(tmp_path)
    resplit = operations.resplit_version(raw, splits.SplitOptions(seed=99))
    moved = [e.row for e, f in zip(raw.examples.order_by("row"), resplit.examples.order_by("row")) if e.split != f.split]
    result = diff.compare(raw, resplit)
    assert moved and counts(result) == (len(moved), 0, 0)
    edit = result["pages"][diff.EDITED].rows[0]
    assert edit.split_changed and not edit.label_changed and edit.old.row == moved[0]


@pytest.mark.django_db(transaction=True)
def test_frozen_labels_are_label_edits(tmp_path):
    from lifecycle.labeling import freezing, qc
    from lifecycle.labeling.models import Item
    from tests.labeling.factories import label_queue, labeled_version, make_labelers, make_project, true_label

    engineer = make_user("erin-engineer", "ml_engineer")
    version = labeled_version(tmp_path, engineer, n=30)
    project = make_project(version, engineer, overlap=2, gold_share=0.1)

    def choose(assignment):  # both labelers call the first three they meet "refund"
        return "refund" if assignment.position < 3 and not assignment.item.is_gold else true_label(assignment)

    labelers = make_labelers(2)
    while any([label_queue(project, user, choose, limit=5) for user in labelers]):
        pass
    frozen = freezing.freeze(project.pk, qc.compute(project).pk)
    old_labels = dict(version.examples.values_list("row", "label"))
    changed = sorted(row for row, label in Item.objects.filter(project=project).values_list("example__row", "consensus_label")
                     if label and label != old_labels[row])
    result = diff.compare(version, frozen)
    assert changed and counts(result) == (len(changed), 0, 0)
    edits = result["pages"][diff.EDITED].rows
    assert [e.old.row for e in edits] == changed
    assert all(e.label_changed and e.new.label == "refund" and e.old.text == e.new.text for e in edits)


@pytest.mark.django_db
def test_two_uploads_of_different_files_match_by_content(tmp_path):
    dataset = Dataset.create(None, slug="plain", name="Plain", pii_policy="allow")
    base = rows(30)
    [old] = upload(dataset, tmp_path, base, "a.jsonl")
    changed = base[2:] + rows(4, start=500)  # rows 0 and 1 gone, four new at the end
    changed[0] = dict(changed[0], label="shipping" if changed[0]["label"] != "shipping" else "billing")
    changed.append(dict(base[7]))  # a second copy of a text held once: one row added
    [new] = upload(dataset, tmp_path, changed, "b.jsonl")
    result = diff.compare(old, new)
    assert result["match_by"] == "content"
    assert counts(result) == (1, 5, 2)
    assert rows_of(result, diff.REMOVED) == [0, 1]
    assert rows_of(result, diff.ADDED) == [28, 29, 30, 31, 32]
    [edit] = result["pages"][diff.EDITED].rows
    assert (edit.old.row, edit.new.row, edit.old.label) == (2, 0, base[2]["label"]) and edit.label_changed


@pytest.mark.django_db
def test_a_version_against_itself_has_no_changes(tmp_path):
    raw, _, _ = family(tmp_path)
    assert counts(diff.compare(raw, raw)) == (0, 0, 0)


# --- the row keys the diff reads ------------------------------------------------------------------


@pytest.mark.django_db
def test_each_version_gets_its_row_keys_and_they_match_its_examples(tmp_path):
    raw, redacted, deduped = family(tmp_path)
    for version in (raw, redacted, deduped):
        stored = diff.row_keys(version)
        assert stored.num_rows == version.row_count
        # The keys written as the rows streamed equal those read back from the examples.
        assert stored.equals(diff.keys_from_database(version))
        examples = list(version.examples.order_by("row").values_list("row", "row_sha256", "split"))
        assert stored["row"].to_pylist() == [row for row, _, _ in examples]
        assert stored["split"].to_pylist() == [split for _, _, split in examples]
        assert stored["hash"].to_pylist() == [int.from_bytes(bytes.fromhex(sha[:16]), "big", signed=True)
                                              for _, sha, _ in examples]
    # Rows 20, 21 and 50 copy rows 2, 5 and 9: second occurrences of their content key.
    keys = diff.with_occurrence(diff.row_keys(raw))
    occurrence = dict(zip(keys["row"].to_pylist(), keys["occurrence"].to_pylist()))
    assert [occurrence[row] for row in (2, 20, 5, 21, 9, 50, 0)] == [1, 2, 1, 2, 1, 2, 1]


@pytest.mark.django_db
def test_a_version_without_row_keys_gets_them_on_its_first_diff(tmp_path):
    raw, redacted, _ = family(tmp_path)
    RowKeys.objects.filter(version=raw).delete()
    get_store().delete(RowKeys.objects.get(version=redacted).keys_sha256)  # and one whose artifact is gone
    assert counts(diff.compare(raw, redacted)) == (11, 0, 0)
    assert RowKeys.objects.filter(version__in=[raw, redacted]).count() == 2
    assert get_store().exists(RowKeys.objects.get(version=raw).keys_sha256)


# --- the page -------------------------------------------------------------------------------------


@pytest.fixture
def eng_client(client, db):
    client.force_login(make_user("erin", "ml_engineer"))
    return client


def many_edits(folder, n=120, slug="support"):
    """An upload and its redaction with `n` edits: every row has an address."""
    dataset = Dataset.create(None, slug=slug, name=slug.title(), pii_policy="redact")
    data = [{"text": f"note {i} {'abcdefghijklmnopqrstuvwxyz'[i % 26] * 3} to user{i}@example.org", "label": LABELS[i % 3]}
            for i in range(n)]
    return upload(dataset, folder, data, f"{slug}.jsonl")


def test_the_page_shows_one_page_of_edits_and_pages_on(eng_client, tmp_path):
    many_edits(tmp_path)
    page = eng_client.get("/datasets/support/diff", {"a": 1, "b": 2})
    assert page.status_code == 200
    edited = page.context["diff"]["pages"]["edited"]
    assert (edited.total, len(edited.rows), edited.rows[0].old.row, edited.has_next) == (120, 50, 0, True)
    html = page.content.decode()
    assert "<del>user0@example.org</del>" in html and "<ins>&lt;EMAIL&gt;</ins>" in html
    assert 'href="?a=1&amp;b=2&amp;edited=2&amp;added=1&amp;removed=1#edited"' in html
    last = eng_client.get("/datasets/support/diff", {"a": 1, "b": 2, "edited": 3}).context["diff"]["pages"]["edited"]
    assert [e.old.row for e in last.rows] == list(range(100, 120)) and not last.has_next and last.has_previous
    past = eng_client.get("/datasets/support/diff", {"a": 1, "b": 2, "edited": 9})
    assert past.status_code == 200 and past.context["diff"]["edited_count"] == 120
    assert past.context["diff"]["pages"]["edited"].rows == []


def test_user_text_on_the_page_is_escaped(eng_client, tmp_path):
    dataset = Dataset.create(None, slug="support", name="Support", pii_policy="redact")
    upload(dataset, tmp_path, [{"text": "<script>alert(1)</script> mail evil@example.com <b>now</b>", "label": "a"},
                               {"text": "another one", "label": "b"}])
    html = eng_client.get("/datasets/support/diff", {"a": 1, "b": 2}).content.decode()
    assert "<script>alert" not in html and "<b>now" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; mail <del>evil@example.com</del> &lt;b&gt;now&lt;/b&gt;" in html


@pytest.mark.parametrize("value", ["0", "-1", "x", "²", "1.5", "99999999999999999999", "1000001"])
def test_a_hostile_page_number_is_refused_with_400(eng_client, tmp_path, value):
    many_edits(tmp_path, n=6)
    response = eng_client.get("/datasets/support/diff", {"a": 1, "b": 2, "added": value})
    assert response.status_code == 400 and "page of added rows must be" in response.content.decode()


def test_the_diff_needs_a_role_that_may_read_rows(client, tmp_path, db):
    many_edits(tmp_path, n=6)
    client.force_login(make_user("vic", "viewer"))
    assert client.get("/datasets/support/diff", {"a": 1, "b": 2}).status_code == 403


# --- SQLite ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_diff_is_the_same_on_sqlite(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "LIFECYCLE_DATA_DIR": str(tmp_path), "ARTIFACT_DIR": str(tmp_path / "artifacts"), "DEBUG": "true"}
    manage(env, "migrate", "-v0")
    out = manage(env, "shell", "-c", f"from tests.datasets.test_diff import on_sqlite; on_sqlite({str(tmp_path)!r})")
    found = json.loads(out.strip().splitlines()[-1])
    assert found["vendor"] == "sqlite"
    assert found["redaction"] == {"counts": [11, 0, 0], "edited": [[r, r] for r in PII_ROWS], "match_by": "identity"}
    assert found["dedup"] == {"counts": [0, 0, 3], "removed": list(DUPLICATE_ROWS), "match_by": "identity"}
    assert found["uploads"] == {"counts": [1, 5, 2], "removed": [0, 1], "added": [28, 29, 30, 31, 32], "match_by": "content"}
    assert found["page_3"] == list(range(100, 120))


def manage(env, *args):
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def on_sqlite(folder):
    """What the SQLite test runs in `manage.py shell`: the same versions, the diffs as JSON."""
    from django.db import connection

    folder = Path(folder)
    raw, redacted, deduped = family(folder)
    plain = Dataset.create(None, slug="plain", name="Plain", pii_policy="allow")
    base = rows(30)
    changed = base[2:] + rows(4, start=500)
    changed[0] = dict(changed[0], label="shipping" if changed[0]["label"] != "shipping" else "billing")
    changed.append(dict(base[7]))
    [old], [new] = upload(plain, folder, base, "a.jsonl"), upload(plain, folder, changed, "b.jsonl")
    first, second = many_edits(folder, slug="many")
    redaction, dedup, uploads = diff.compare(raw, redacted), diff.compare(raw, deduped), diff.compare(old, new)
    page_3 = diff.compare(first, second, {diff.EDITED: 3})
    print(json.dumps({
        "vendor": connection.vendor,
        "redaction": {"counts": counts(redaction), "edited": rows_of(redaction, diff.EDITED), "match_by": redaction["match_by"]},
        "dedup": {"counts": counts(dedup), "removed": rows_of(dedup, diff.REMOVED), "match_by": dedup["match_by"]},
        "uploads": {"counts": counts(uploads), "removed": rows_of(uploads, diff.REMOVED),
                    "added": rows_of(uploads, diff.ADDED), "match_by": uploads["match_by"]},
        "page_3": [e.old.row for e in page_3["pages"][diff.EDITED].rows],
    }))

