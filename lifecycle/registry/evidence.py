"""The evidence a promotion is decided on, as one canonical JSON document, and its hash.

An approval stores the hash of the evidence it was given on. The document holds what an
approver relies on: the artifact key, the signature bundle and its check, the metrics, every
gate's result, the training data's manifest hash and the model card's hash. If any of them
changes before the last approval, earlier approvals are void (PromotionRequest.approve).
"""
import hashlib

from lifecycle.core.models import canonical_json
from lifecycle.registry import gates

# The keys whose change voids approvals; `gates` holds each gate's status and numbers.
KEYS = ("artifact", "signature", "metrics", "gates", "dataset_manifest_sha256", "card_sha256", "from_stage")


def collect(version, target_stage):
    """The evidence for moving `version` to `target_stage`, as of now (runs every gate)."""
    results = gates.evaluate_all(version, target_stage)
    data = version.run.dataset_version
    return {
        "version": {"model": version.model.slug, "number": version.number, "id": version.pk},
        "target_stage": str(target_stage),
        "from_stage": version.stage,
        "artifact": {"output_sha256": version.output_sha256, "bytes": version.artifact_bytes},
        "signature": {"bundle_sha256": version.signature_sha256, "status": version.signature_status},
        "metrics": version.metrics,
        "gates": results,
        "dataset_manifest_sha256": data.manifest_sha256,
        "card_sha256": version.card_sha256,
    }


def digest(evidence):
    return hashlib.sha256(canonical_json(evidence).encode()).hexdigest()


def changed_keys(before, after):
    """The evidence entries that differ, by name (a gate by its own name)."""
    changed = [key for key in KEYS if key != "gates" and before.get(key) != after.get(key)]
    old = {g["gate"]: g for g in before.get("gates", [])}
    changed += [f"gate {g['gate']}" for g in after.get("gates", []) if old.get(g["gate"]) != g]
    return changed or ["evidence"]
