"""The governance export: one JSON document and one printable page holding a version's lineage,
card, signature (checkable with model_signing's own CLI from the export alone plus the files),
gates, requests and approvals, its audit events and the chain segment around them. The
standalone docs/verify_export.py passes on a real export and fails once it is altered."""
import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.test import Client

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import AuditEvent, canonical_json
from lifecycle.lib import signing_keys
from lifecycle.registry import export
from lifecycle.registry.models import ModelVersion, RegisteredModel, Stage
from lifecycle.runs import outputs
from tests.registry.factories import registered

ROOT = Path(__file__).resolve().parents[2]
VERIFY = ROOT / "docs" / "verify_export.py"

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]


def make_user(username, *roles):
    user = User.objects.create(username=username)
    user.groups.add(*(Group.objects.get_or_create(name=role)[0] for role in roles))
    return user


@pytest.fixture
def people(db):
    return {"erin": make_user("erin", "ml_engineer"), "ann": make_user("ann", "approver"),
            "abe": make_user("abe", "approver"), "vic": make_user("vic", "viewer"), "ona": make_user("ona", "oncall"),
            "lee": make_user("lee", "labeler"), "sam": make_user("sam")}


def as_user(user):
    client = Client()
    client.force_login(user)
    return client


def promoted(trained, people, tmp_path):
    """A version taken to production by two approvals, with unrelated events in between."""
    version = registered(trained, people["erin"], tmp_path)
    RegisteredModel.create(people["erin"], name="Unrelated Model")  # an event about something else, mid-segment
    request = version.request_promotion(people["erin"], Stage.PRODUCTION, "beats the baseline")
    request.approve(people["ann"], "metrics hold", seen_sha256=request.evidence_sha256)
    with transaction.atomic():
        AuditEvent.record(None, "something.else", payload={"secret": "not for this export"}, object_type="x", object_id="1")
    request.refresh_from_db()
    request.approve(people["abe"], "card is complete", seen_sha256=request.evidence_sha256)
    version.refresh_from_db()
    return version, request


def export_url(version, suffix=""):
    return f"/registry/models/{version.model.slug}/versions/{version.number}/export{suffix}"


def event_hash(event):
    fields = {key: value for key, value in event.items() if key != "hash"}
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def run_verifier(path, *args):
    return subprocess.run([sys.executable, str(VERIFY), str(path), *args], capture_output=True, text=True, timeout=60)


def test_the_export_holds_lineage_card_signature_gates_approvals_and_the_audit_segment(trained, people, tmp_path, settings):
    version, request = promoted(trained, people, tmp_path)
    response = as_user(people["vic"]).get(export_url(version, ".json"))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="intent-router-v1-governance.json"'
    doc = json.loads(response.content)
    assert doc["format"] == export.FORMAT and doc["exported_by"] == "vic"
    assert doc["version"]["number"] == 1 and doc["version"]["stage"] == "production"
    assert doc["lineage"]["run"]["id"] == version.run_id
    assert doc["lineage"]["dataset_version"]["manifest_sha256"] == version.run.dataset_version.manifest_sha256
    assert doc["card"]["markdown"] == version.card and doc["card"]["sha256"] == version.card_sha256
    # Signature: bundle, manifest and key as stored, the files as listed, a check made for the export.
    signature, store = doc["signature"], get_store()
    assert signature["verification"]["ok"] and signature["verification"]["checked_for_this_export"]
    assert base64.b64decode(signature["bundle"]["base64"]) == store.read_bytes(version.signature_sha256)
    assert base64.b64decode(signature["manifest"]["base64"]) == store.read_bytes(version.output_sha256)
    assert signature["public_key_pem"].encode() == signing_keys.public_pem(settings.SIGNING_KEY_FILE)
    listed = outputs.read_manifest(version.output_sha256)["files"]
    assert {f["path"]: f["sha256"] for f in signature["files"]} == listed
    assert all(f["bytes"] == store.size(f["sha256"]) and f["download"] == f"/artifacts/{f['sha256']}" for f in signature["files"])
    # Requests: gates with their numbers, the evidence that hashes to its digest, who approved when.
    (exported,) = doc["requests"]
    assert exported["status"] == "approved" and exported["requester"] == "erin" and exported["reason"] == "beats the baseline"
    assert [(a["approver"], a["comment"]) for a in exported["approvals"]] == [("ann", "metrics hold"), ("abe", "card is complete")]
    assert all(a["created_at"] and a["evidence_sha256"] == exported["evidence_sha256"] for a in exported["approvals"])
    assert hashlib.sha256(canonical_json(exported["evidence"]).encode()).hexdigest() == exported["evidence_sha256"]
    gates = {g["gate"]: g for g in exported["gates"]}
    assert gates["metrics"]["status"] == "pass" and gates["metrics"]["numbers"]["accuracy"]["min"] == 0.3
    assert [(c["from_stage"], c["to_stage"], c["actor"]) for c in doc["stage_changes"]] == [("candidate", "production", "abe")]
    # The audit events about this version, each recomputable, and nothing about the others.
    events = doc["audit"]["events"]
    actions = [e["action"] for e in events]
    for action in ("dataset_version.created", "registered_model.created", "model_version.created",
                   "promotion.requested", "promotion.approved", "stage.changed"):
        assert action in actions
    assert actions.count("promotion.approved") == 2 and "something.else" not in actions
    assert all(event_hash(e) == e["hash"] for e in events)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert "not for this export" not in response.content.decode() and "Unrelated Model" not in response.content.decode()
    # The segment runs from the first to the last of them, every link connected; others withheld.
    segment = doc["audit"]["segment"]
    links = segment["links"]
    assert (segment["from_seq"], segment["to_seq"]) == (events[0]["seq"], events[-1]["seq"])
    assert [link["seq"] for link in links] == list(range(segment["from_seq"], segment["to_seq"] + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(links, links[1:]))
    withheld = [link for link in links if not link["included"]]
    assert withheld and {link["seq"] for link in links if link["included"]} == {e["seq"] for e in events}
    stored = AuditEvent.objects.get(action="something.else")
    assert {"seq": stored.seq, "prev_hash": stored.prev_hash, "hash": stored.hash, "included": False} in links
    assert doc["audit"]["chain_verification"]["intact"] is True
    head = AuditEvent.objects.order_by("-seq").first()
    assert doc["audit"]["head"] == {"seq": head.seq, "hash": head.hash}
    assert doc["export_sha256"] == export.digest(doc)


def test_the_api_export_is_the_same_document(trained, people, tmp_path):
    version, _ = promoted(trained, people, tmp_path)
    response = as_user(people["ona"]).get(f"/api/v1/registry/models/intent-router/versions/{version.number}/export")
    assert response.status_code == 200
    doc = response.json()
    assert doc["export_sha256"] == export.digest(doc) and doc["exported_by"] == "ona"
    assert doc["signature"]["verification"]["ok"]


def test_verify_export_passes_on_a_real_export_and_fails_once_one_event_is_altered(trained, people, tmp_path):
    version, _ = promoted(trained, people, tmp_path)
    path = tmp_path / "export.json"
    path.write_bytes(as_user(people["erin"]).get(export_url(version, ".json")).content)
    ok = run_verifier(path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK: export hash matches")
    doc = json.loads(path.read_text())
    approval = next(e for e in doc["audit"]["events"] if e["action"] == "promotion.approved")
    # One payload altered, and the export's own hash recomputed to hide it: the event's hash gives it away.
    approval["payload"]["comment"] = "rubber stamp"
    doc["export_sha256"] = export.digest(doc)
    path.write_text(export.dumps(doc))
    bad = run_verifier(path)
    assert bad.returncode == 1
    assert f"FAIL: event #{approval['seq']}: its fields do not hash to its hash" in bad.stdout
    # Its hash recomputed too, in the event and its link: now the next link's prev_hash no longer matches.
    approval["hash"] = event_hash(approval)
    next(link for link in doc["audit"]["segment"]["links"] if link["seq"] == approval["seq"])["hash"] = approval["hash"]
    doc["export_sha256"] = export.digest(doc)
    path.write_text(export.dumps(doc))
    bad = run_verifier(path)
    assert bad.returncode == 1 and "prev_hash is not the hash of" in bad.stdout
    # Left alone, but the document edited elsewhere: the export hash no longer matches.
    doc = json.loads(as_user(people["erin"]).get(export_url(version, ".json")).content)
    doc["version"]["stage"] = "candidate"
    path.write_text(json.dumps(doc))
    bad = run_verifier(path)
    assert bad.returncode == 1 and "export_sha256 does not match" in bad.stdout


def test_the_signature_verifies_with_model_signing_from_the_export_and_downloaded_files(trained, people, tmp_path):
    version, _ = promoted(trained, people, tmp_path)
    erin = as_user(people["erin"])
    path = tmp_path / "export.json"
    path.write_bytes(erin.get(export_url(version, ".json")).content)
    folder = tmp_path / "check"
    unpacked = run_verifier(path, "--unpack", str(folder))
    assert unpacked.returncode == 0, unpacked.stdout + unpacked.stderr
    assert "curl" in unpacked.stdout
    for item in json.loads(path.read_text())["signature"]["files"]:  # what the printed curl lines fetch
        response = erin.get(item["download"])
        assert response.status_code == 200
        target = folder / "model" / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"".join(response.streaming_content))
    cli = Path(sys.executable).with_name("model_signing")
    command = [str(cli), "verify", "key", str(folder / "model"), "--signature", str(folder / "model.sig"),
               "--public_key", str(folder / "signing-key.pub")]
    ok = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    manifest = folder / "model" / "lifecycle-output.json"
    manifest.write_bytes(manifest.read_bytes() + b" ")  # the signed metadata, one byte longer
    bad = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0


def test_an_export_of_a_tampered_version_says_so_and_holds_the_failure_event(trained, people, tmp_path):
    version = registered(trained, people["erin"], tmp_path)
    weights = next(sha for name, sha in outputs.read_manifest(version.output_sha256)["files"].items()
                   if name.endswith(".safetensors"))
    stored = get_store().path(weights)
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")
    response = as_user(people["vic"]).get(export_url(version, ".json"))
    assert response.status_code == 200
    doc = json.loads(response.content)
    assert doc["signature"]["verification"]["ok"] is False and doc["signature"]["status"] == "invalid"
    assert "model_version.signature_failed" in [e["action"] for e in doc["audit"]["events"]]
    page = as_user(people["vic"]).get(export_url(version)).content.decode()
    assert "NOT VALID when exported" in page
    assert ModelVersion.objects.get(pk=version.pk).signature_status == "invalid"


def test_the_page_prints_on_a4_without_inline_styles_or_scripts(trained, people, tmp_path):
    version, _ = promoted(trained, people, tmp_path)
    response = as_user(people["vic"]).get(export_url(version))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Intent Router — version 1" in page and "Valid when exported" in page
    assert 'href="/static/css/export.css"' in page and "<style" not in page and " style=" not in page
    assert "<script" not in page
    assert "metrics hold" in page and "card is complete" in page and "beats the baseline" in page
    assert "The whole audit chain verified intact at export" in page and "BEGIN PUBLIC KEY" in page
    assert "not for this export" not in page
    assert "Content-Security-Policy" in response.headers
    css = (ROOT / "static" / "css" / "export.css").read_text()
    assert "@page { size: A4;" in css and "@media print" in css


def test_a_card_cannot_put_html_on_the_export_page(trained, people, tmp_path):
    version = registered(trained, people["erin"], tmp_path)
    version.edit_card(people["erin"], version.card + '\n\n<script>alert(1)</script> [x](javascript:alert(1))\n')
    page = as_user(people["vic"]).get(export_url(version)).content.decode()
    assert "<script>alert(1)</script>" not in page and 'href="javascript:' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_who_may_read_an_export(trained, people, tmp_path):
    version = registered(trained, people["erin"], tmp_path)
    for name in ("erin", "ann", "vic", "ona"):
        for suffix in ("", ".json"):
            assert as_user(people[name]).get(export_url(version, suffix)).status_code == 200, (name, suffix)
    for name in ("lee", "sam"):
        for suffix in ("", ".json"):
            assert as_user(people[name]).get(export_url(version, suffix)).status_code == 403, (name, suffix)
    assert Client().get(export_url(version)).status_code == 302
    erin = as_user(people["erin"])
    assert erin.get("/registry/models/intent-router/versions/9/export").status_code == 404
    assert erin.get("/registry/models/nope/versions/1/export.json").status_code == 404
    assert erin.post(export_url(version, ".json")).status_code == 405
