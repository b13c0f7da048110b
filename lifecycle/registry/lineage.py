"""A version's lineage, stored with it at registration: the run, the dataset version it
trained on, that version's ancestors back to the upload, and what made any of them (a
labeling project, through datasets/lineage.py). Stored, not recomputed, so the record
stays what it was when the version was registered."""
from lifecycle.datasets import lineage as dataset_lineage


def _version(version):
    return {
        "id": version.pk, "dataset": version.dataset.slug, "number": version.number, "operation": version.operation,
        "manifest_sha256": version.manifest_sha256, "rows": version.row_count, "pii_status": version.pii_status,
        "has_leakage": version.has_leakage, "url": version.get_absolute_url(),
        "made_by": dataset_lineage.made_by(version),
    }


def of_run(run):
    data = run.dataset_version
    return {
        "run": {"id": run.pk, "name": run.name, "method": run.method, "base_model": run.base_model,
                "base_model_sha256": run.base_model_sha256, "seed": run.seed, "output": run.output_sha256,
                "started_by": getattr(run.created_by, "username", ""), "url": run.get_absolute_url()},
        "dataset_version": _version(data),
        "ancestors": [_version(v) for v in dataset_lineage.chain(data)[1:]],
    }


def labeling_sources(lineage):
    """The labeling projects anywhere in a stored lineage."""
    versions = [lineage["dataset_version"], *lineage.get("ancestors", [])]
    return [made for v in versions for made in v.get("made_by", []) if made.get("kind") == "labeling_project"]


# Where a version went after registration: apps higher up (deployments) register a function
# `(version) -> list of {"kind", "name", "url", "detail"}`, so lineage walks on from a version to
# what served it without the registry importing them (the same shape as datasets/lineage.py).
_downstream = []


def downstream(func):
    if func not in _downstream:
        _downstream.append(func)
    return func


def reached(version):
    return [step for func in _downstream for step in func(version)]
