"""The labeling project a frozen dataset version came from, as a lineage source
(datasets/lineage.py), with the QC verdict its freeze was given on."""
from lifecycle.datasets import lineage
from lifecycle.labeling.models import LabelingProject


@lineage.source
def labeling_project(version):
    project = LabelingProject.objects.filter(frozen_version=version).first()
    if project is None:
        return None
    report = project.latest_qc()
    override = project.freeze_override or {}
    return {
        "kind": "labeling_project", "id": project.pk, "name": project.name, "url": project.get_absolute_url(),
        "labeled_version": project.version_id,
        "qc": {"passes": bool(report and report.passes), "reasons": report.reasons if report else ["no QC report"],
               "report": report.pk if report else None},
        "qc_override": {"approver": override.get("approver"), "reason": override.get("reason")} if override else None,
    }
