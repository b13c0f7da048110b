"""The hash-chained audit trail: written in the change's transaction, append-only, verifiable."""
import csv
import io
import json
import threading
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from lifecycle.core.models import GENESIS_HASH, AuditEvent
from tests.conftest import make_user


def record(action="thing.done", payload=None, actor=None, object_id="1"):
    with transaction.atomic():
        return AuditEvent.record(actor, action, payload=payload or {}, object_type="test.thing", object_id=object_id)


def raw(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.django_db
def test_events_chain_and_verify():
    first = record(payload={"n": 1, "text": "héllo", "nested": {"b": 2, "a": [1.5, None]}})
    second = record(payload={"n": 2})
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
    stored = AuditEvent.objects.get(seq=1)
    assert stored.compute_hash() == stored.hash  # the hash survives the database round trip
    assert AuditEvent.verify_chain() is None
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert "intact: 2 events" in out.getvalue()


@pytest.mark.django_db
def test_record_outside_a_transaction_is_refused(django_db_blocker):
    # pytest-django wraps each test in a transaction; step outside it to show the guard.
    with pytest.raises(RuntimeError, match="inside transaction.atomic"):
        connection.in_atomic_block, saved = False, connection.in_atomic_block
        try:
            AuditEvent.record(None, "x")
        finally:
            connection.in_atomic_block = saved


@pytest.mark.django_db
def test_event_rolls_back_with_its_change():
    user = make_user("erin", "ml_engineer")
    with pytest.raises(ZeroDivisionError):
        with transaction.atomic():
            AuditEvent.record(user, "user.renamed", user, {"to": "x"})
            1 / 0
    assert not AuditEvent.objects.filter(action="user.renamed").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("statement", [
    "UPDATE core_auditevent SET action = 'forged'",
    "DELETE FROM core_auditevent",
    "TRUNCATE core_auditevent",
])
def test_trigger_refuses_update_delete_truncate(statement):
    record()
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic():
            raw(statement)
    assert AuditEvent.objects.get().action == "thing.done"


@pytest.mark.django_db
def test_model_refuses_update_and_delete():
    event = record()
    with pytest.raises(RuntimeError):
        event.save()
    with pytest.raises(RuntimeError):
        event.delete()


def tamper(sql, params=()):
    """Alter the trail behind the trigger's back, as an attacker with table ownership could."""
    raw("ALTER TABLE core_auditevent DISABLE TRIGGER USER")
    raw(sql, params)
    raw("ALTER TABLE core_auditevent ENABLE TRIGGER USER")


@pytest.mark.django_db
def test_verify_names_the_first_altered_event():
    for n in range(5):
        record(payload={"n": n})
    tamper("UPDATE core_auditevent SET payload = %s WHERE seq = 3", [json.dumps({"n": 99})])
    with pytest.raises(CommandError, match=r"broken at event #3: contents do not match"):
        call_command("audit_verify")


@pytest.mark.django_db
def test_verify_finds_a_removed_event():
    for n in range(4):
        record(payload={"n": n})
    tamper("DELETE FROM core_auditevent WHERE seq = 2")
    assert AuditEvent.verify_chain() == (2, "event #2 is missing (next is #3)")


@pytest.mark.django_db
def test_verify_finds_a_rewritten_chain_link():
    for n in range(3):
        record(payload={"n": n})
    tamper("UPDATE core_auditevent SET prev_hash = %s WHERE seq = 2", ["f" * 64])
    assert AuditEvent.verify_chain()[0] == 2


@pytest.mark.django_db(transaction=True)
def test_eight_concurrent_writers_leave_one_unbroken_chain():
    per_thread, errors = 15, []

    def writer(index):
        try:
            for n in range(per_thread):
                record(payload={"thread": index, "n": n})
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert AuditEvent.objects.count() == 8 * per_thread
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, 8 * per_thread + 1))
    assert AuditEvent.verify_chain() is None


# --- the audit page ---------------------------------------------------------------------


@pytest.fixture
def auditor(client, db):
    client.force_login(make_user("alex-approver", "approver"))
    return client


def seed_events():
    erin, omar = make_user("erin", "ml_engineer"), make_user("omar", "oncall")
    record("dataset.uploaded", {"rows": 10}, actor=erin)
    record("deployment.rolled_back", {"to": 3}, actor=omar)
    record("dataset.uploaded", {"rows": 20, "note": "=HYPERLINK(\"x\")"}, actor=erin)


def test_audit_page_filters_by_actor_and_action(auditor):
    seed_events()
    response = auditor.get("/audit/", {"actor": "erin", "action": "dataset.uploaded"})
    assert response.status_code == 200
    assert [e.seq for e in response.context["page"].items] == [3, 1]
    response = auditor.get("/audit/", {"object_type": "test.thing", "object_id": "1", "action": "deployment.rolled_back"})
    assert [e.actor for e in response.context["page"].items] == ["omar"]


def test_audit_page_filters_by_time_range(auditor):
    seed_events()
    future = (timezone.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert auditor.get("/audit/", {"since": future}).context["page"].items == []
    response = auditor.get("/audit/", {"since": "2026-11-25T10:00", "until": "2026-11-24T10:00"})
    assert response.status_code == 400
    assert "must be before" in response.content.decode()


def test_audit_page_paginates_on_the_server(auditor):
    for n in range(120):
        record(payload={"n": n})
    first = auditor.get("/audit/").context["page"]
    assert len(first.items) == 50 and first.items[0].seq == 120 and first.older == 71
    second = auditor.get("/audit/", {"before": first.older}).context["page"]
    assert second.items[0].seq == 70 and second.newer == 70
    back = auditor.get("/audit/", {"after": second.newer}).context["page"]
    assert [e.seq for e in back.items] == list(range(120, 70, -1))
    last = auditor.get("/audit/", {"before": 21}).context["page"]
    assert [e.seq for e in last.items][-1] == 1 and last.older is None


def test_audit_page_renders_payloads_escaped(auditor):
    record(payload={"text": "<script>alert(1)</script>"})
    body = auditor.get("/audit/").content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;" in body


def test_audit_csv_export_is_filtered_and_spreadsheet_safe(auditor):
    seed_events()
    response = auditor.get("/audit/export.csv", {"actor": "erin"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [r["seq"] for r in rows] == ["1", "3"]
    assert rows[1]["payload"].startswith("{")  # JSON text, not a formula
    record("x.y", {"a": 1}, object_id="=1+1")
    rows = list(csv.DictReader(io.StringIO(b"".join(auditor.get("/audit/export.csv", {"action": "x.y"}).streaming_content).decode())))
    assert rows[0]["object_id"] == "'=1+1"


def test_audit_json_export_round_trips_and_verifies(auditor):
    seed_events()
    response = auditor.get("/audit/export.json")
    events = json.loads(b"".join(response.streaming_content))
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[1]["prev_hash"] == events[0]["hash"]


def test_audit_export_rejects_unknown_format_and_bad_filters(auditor):
    assert auditor.get("/audit/export.xlsx").status_code == 404
    assert auditor.get("/audit/export.csv", {"since": "not-a-date"}).status_code == 400
