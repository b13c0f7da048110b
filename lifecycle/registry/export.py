"""The governance export of one model version: one JSON document (and the printable page made
from it, templates/registry/export.html) that a reviewer can check with nothing but the
document, the version's files and our public key.

It holds the version and its lineage, the card, the signature bundle with the public key, the
output manifest and every file's digest (enough for `model_signing verify key`), a signature
check made for the export, every promotion request with its gates, evidence and approvals,
the stage timeline, and the audit trail: every event about the version, its model, its
requests, its run and its training data in full, plus the contiguous segment of the chain from
the first of them to the last as (seq, prev_hash, hash) links, the contents of events about
other things withheld. docs/registry-export.md says how to check it by hand;
docs/verify_export.py does the chain part with the standard library only.

The document is JSON-native throughout (timestamps as ISO text), so `export_sha256`, sha256 of
its canonical JSON without that key, can be recomputed by any JSON library that sorts keys.
"""
import base64
import hashlib
import json
from pathlib import Path

from django.contrib.staticfiles import finders
from django.db.models import Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from lifecycle.core.artifacts import ArtifactError, get_store
from lifecycle.core.models import AuditEvent, canonical_json
from lifecycle.core.roles import APPROVER, ML_ENGINEER, ONCALL, VIEWER
from lifecycle.datasets.models import DatasetVersion
from lifecycle.registry import cards, signing
from lifecycle.registry.models import ModelVersion, PromotionRequest, RegisteredModel
from lifecycle.runs.models import Run

FORMAT = "lifecycle-governance-export/1"
HASH_KEY = "export_sha256"
# Who reads the registry, and so a version's export (pages, JSON API, export files).
READERS = (ML_ENGINEER, APPROVER, VIEWER, ONCALL)


# --- the document ------------------------------------------------------------------------------


def build(version, user=None):
    """The export of `version` as of now. The signature is checked afresh first (a failure
    marks the version invalid and is audited, so it appears in the export's own events)."""
    verification = version.verify(actor=user)
    version = ModelVersion.objects.for_listing().get(pk=version.pk)
    requests = list(version.requests.select_related("requester", "decided_by")
                    .prefetch_related("approvals__approver").order_by("created_at", "pk"))
    events = audit_events(version, requests)
    head = AuditEvent.objects.order_by("-seq").values("seq", "hash").first()
    doc = {
        "format": FORMAT,
        "exported_at": timezone.now().isoformat(),
        "exported_by": getattr(user, "username", "") or "",
        "version": version_record(version),
        "lineage": version.lineage,
        "card": {"markdown": version.card, "sha256": version.card_sha256,
                 "missing_sections": cards.missing_sections(version.card)},
        "signature": signature_record(version, verification),
        "stage_changes": [stage_change_record(change) for change in version.timeline()],
        "requests": [request_record(request) for request in requests],
        "audit": {
            "events": [_event(event) for event in events],
            "segment": chain_segment(events),
            "chain_verification": _chain_verification(head),
            "head": head,
        },
    }
    doc = json.loads(canonical_json(doc))  # JSON-native from here on: what is hashed is what is sent
    doc[HASH_KEY] = digest(doc)
    return doc


def digest(doc):
    """sha256 of the document's canonical JSON without its own hash."""
    body = {key: value for key, value in doc.items() if key != HASH_KEY}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def dumps(doc):
    """The export as a file: indented for people; the hash does not depend on the layout."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def filename(version, suffix):
    return f"{version.model.slug}-v{version.number}-governance.{suffix}"


# --- its parts (the JSON API shows the same records) --------------------------------------------


def _username(user):
    return getattr(user, "username", None)


def version_record(version):
    model = version.model
    return {
        "id": version.pk, "number": version.number, "stage": version.stage,
        "model": {"id": model.pk, "slug": model.slug, "name": model.name, "description": model.description},
        "run": version.run_id, "task": version.task, "labels": version.labels,
        "base_model": {"name": version.base_model_name, "sha256": version.base_model_sha256},
        "output_sha256": version.output_sha256, "artifact_bytes": version.artifact_bytes,
        "metrics": version.metrics, "evaluation": version.evaluation,
        "registered_by": _username(version.registered_by), "created_at": version.created_at,
        "url": version.get_absolute_url(),
    }


def request_record(request):
    """A promotion request with its gates (and their numbers), evidence and approvals."""
    return {
        "id": request.pk, "from_stage": request.from_stage, "to_stage": request.to_stage, "status": request.status,
        "requester": _username(request.requester), "reason": request.reason, "created_at": request.created_at,
        "approvals_required": request.approvals_required,
        "approvals": [_approval(approval) for approval in request.approvals.all()],
        "gates": request.gate_results, "failed_gates": [g["gate"] for g in request.failed_gates],
        "overrides": request.overrides, "evidence_sha256": request.evidence_sha256, "evidence": request.evidence,
        "void_note": request.void_note, "decided_by": _username(request.decided_by),
        "decision_comment": request.decision_comment, "closed_at": request.closed_at,
        "url": request.get_absolute_url(),
    }


def _approval(approval):
    return {"approver": approval.approver.username, "comment": approval.comment,
            "evidence_sha256": approval.evidence_sha256, "void": approval.void, "created_at": approval.created_at}


def stage_change_record(change):
    return {"from_stage": change.from_stage, "to_stage": change.to_stage, "changed_at": change.changed_at,
            "actor": _username(change.actor), "request": change.request_id}


def signature_record(version, verification):
    """Everything `model_signing verify key` needs besides the files themselves: the bundle,
    the public key, the manifest written beside the files (byte for byte), and each file's
    digest and download address."""
    manifest_b64, manifest_error = _stored_base64(version.output_sha256)
    bundle_b64, bundle_error = _stored_base64(version.signature_sha256)
    return {
        "status": version.signature_status, "checked_at": version.signature_checked_at,
        "error": version.signature_error,
        "verification": {**verification.as_dict(), "checked_for_this_export": True},
        "bundle": {"name": signing.BUNDLE_NAME, "sha256": version.signature_sha256, "base64": bundle_b64,
                   "error": bundle_error},
        "public_key_pem": signing.public_key_pem().decode("ascii"),
        "manifest": {"name": signing.MANIFEST_NAME, "sha256": version.output_sha256, "base64": manifest_b64,
                     "error": manifest_error},
        "files": _files(manifest_b64),
    }


def _stored_base64(key):
    try:
        return base64.b64encode(get_store().read_bytes(key)).decode("ascii"), ""
    except ArtifactError as exc:
        return None, str(exc) or type(exc).__name__


def _files(manifest_b64):
    if manifest_b64 is None:
        return []
    manifest = json.loads(base64.b64decode(manifest_b64))
    store = get_store()
    return [{"path": path, "sha256": sha, "bytes": store.size(sha) if store.exists(sha) else None,
             "download": reverse("artifact_download", args=[sha])}
            for path, sha in sorted((manifest.get("files") or {}).items())]


# --- the audit trail -------------------------------------------------------------------------


def _label(model):
    return model._meta.label_lower


def audit_events(version, requests):
    """Every event about the version, its model, its requests, its run and its training data
    version, in chain order (one query on the (object_type, object_id, seq) index)."""
    about = (Q(object_type=_label(ModelVersion), object_id=str(version.pk))
             | Q(object_type=_label(RegisteredModel), object_id=str(version.model_id))
             | Q(object_type=_label(PromotionRequest), object_id__in=[str(r.pk) for r in requests])
             | Q(object_type=_label(Run), object_id=str(version.run_id))
             | Q(object_type=_label(DatasetVersion), object_id=str(version.run.dataset_version_id)))
    return list(AuditEvent.objects.filter(about).order_by("seq"))


def _event(event):
    return {**event.canonical_fields(), "hash": event.hash}


def chain_segment(events):
    """The chain from the first event in `events` to the last, one link per event: its seq,
    prev_hash and hash, and whether its contents are in the export. A reader checks that the
    seqs are contiguous, that each prev_hash is the previous link's hash, and that each
    included event's fields hash to its link."""
    if not events:
        return {"from_seq": None, "to_seq": None, "links": []}
    first, last = events[0].seq, events[-1].seq
    included = {event.seq for event in events}
    rows = (AuditEvent.objects.filter(seq__gte=first, seq__lte=last).order_by("seq")
            .values_list("seq", "prev_hash", "hash").iterator(chunk_size=5000))
    links = [{"seq": seq, "prev_hash": prev, "hash": this, "included": seq in included} for seq, prev, this in rows]
    return {"from_seq": first, "to_seq": last, "links": links}


def _chain_verification(head):
    """AuditEvent.verify_chain over the whole trail, at export time (through `head` at least)."""
    broken = AuditEvent.verify_chain()
    through = head["seq"] if head else 0
    if broken is None:
        return {"intact": True, "verified_through_seq": through, "broken_at_seq": None, "reason": ""}
    return {"intact": False, "verified_through_seq": through, "broken_at_seq": broken[0], "reason": broken[1]}


# --- the page ----------------------------------------------------------------------------------


def html(doc, *, standalone=False):
    """The printable page. Served pages link static/css/export.css (the CSP forbids inline
    styles); a standalone file (manage.py governance_export --html) carries the CSS inside."""
    context = page_context(doc)
    if standalone:
        context["inline_css"] = Path(finders.find("css/export.css")).read_text(encoding="utf-8")
    return render_to_string("registry/export.html", context)


def page_context(doc):
    """What templates/registry/export.html shows, read from the document itself (so the page
    and the JSON never disagree). Nested values are shown as compact JSON text."""
    links = doc["audit"]["segment"]["links"]
    withheld = sum(1 for link in links if not link["included"])
    requests = [{**request, "gates": [{**gate, "numbers_text": _text(gate["numbers"])} for gate in request["gates"]],
                 "approvals": [{**a, "when": _when(a["created_at"])} for a in request["approvals"]]}
                for request in doc["requests"]]
    return {
        "doc": doc, "card_html": cards.render(doc["card"]["markdown"]), "requests": requests,
        "events": [{**event, "payload_text": _text(event["payload"]), "when": _when(event["created_at"])}
                   for event in doc["audit"]["events"]],
        "stage_changes": [{**change, "when": _when(change["changed_at"])} for change in doc["stage_changes"]],
        "metrics": sorted((k, v) for k, v in doc["version"]["metrics"].items() if isinstance(v, (int, float))),
        "segment": {"from_seq": doc["audit"]["segment"]["from_seq"], "to_seq": doc["audit"]["segment"]["to_seq"],
                    "links": len(links), "included": len(links) - withheld, "withheld": withheld},
    }


def _when(text):
    """"2026-01-02T03:04:05.678+00:00" (or "...Z") as "2026-01-02 03:04:05": every time in the export is UTC."""
    return (text or "")[:19].replace("T", " ")


def _text(value):
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": ")) if value else ""
