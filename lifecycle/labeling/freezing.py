"""Freezing: a project's final labels become a new immutable dataset version, a child of the
labeled one, with the QC summary (and any approver's override) in its manifest."""
from django.db import transaction

from lifecycle.core.models import AuditEvent
from lifecycle.datasets.operations import derive_version, inherited_reports, rehash_row
from lifecycle.datasets.models import DatasetVersion
from lifecycle.labeling.models import Item, LabelingProject, QCReport


def final_labels(project):
    """Example row → the label the project settled on (agreed, adjudicated or gold)."""
    final = (Item.State.AGREED, Item.State.DECIDED, Item.State.GOLD)
    return dict(Item.objects.filter(project=project, state__in=final).values_list("example__row", "consensus_label"))


def summary(project, report, changed, kept):
    data = report.data
    return {
        "project": project.pk, "name": project.name, "overlap": project.overlap,
        "items": project.item_count, "gold_items": project.gold_count, "answers": report.answers,
        "annotators": len(data["annotators"]), "alpha": data["alpha"], "fleiss_kappa": data["fleiss_kappa"],
        "gold_accuracy": {a["username"]: a["gold_accuracy"] for a in data["annotators"]},
        "adjudicated": Item.objects.filter(project=project, state=Item.State.DECIDED).count(),
        "labels_changed": changed, "rows_without_final_label": kept,
        "qc_report": report.pk, "qc_passes": report.passes, "qc_reasons": report.reasons,
        "thresholds": data["thresholds"], "override": project.freeze_override or None,
    }


def freeze(project_id, qc_report_id):
    project = LabelingProject.objects.select_related("version__dataset", "freeze_job__created_by").get(pk=project_id)
    try:
        return _freeze(project, QCReport.objects.get(pk=qc_report_id))
    except BaseException:
        # The project takes answers again; the failed job keeps the error.
        LabelingProject.objects.filter(pk=project.pk).update(status=LabelingProject.Status.OPEN)
        raise


def _freeze(project, report):
    labels = final_labels(project)
    counts = {"changed": 0, "kept": 0, "offset": 0}

    def transform(batch):
        for i in range(len(batch["text"])):
            label = labels.get(counts["offset"] + i)
            if label is None:
                counts["kept"] += 1  # no final label (allowed only by an override): the old one stays
            elif label != batch["label"][i]:
                batch["label"][i] = label
                batch["row_sha256"][i] = rehash_row(batch, i)
                counts["changed"] += 1
        counts["offset"] += len(batch["text"])
        return batch

    user = project.freeze_job.created_by if project.freeze_job_id else None
    parent = project.version
    # The summary counts what the transform changed, so it is made after the last batch.
    # Relabeling moves no text between splits: the leakage report stays the parent's.
    version = derive_version(parent, DatasetVersion.Operation.RELABEL, transform, user=user,
                             reports=inherited_reports(parent),
                             late_reports=lambda: {"labeling": summary(project, report, counts["changed"], counts["kept"]),
                                                   "leakage": parent.leakage_report})
    with transaction.atomic():
        LabelingProject.objects.filter(pk=project.pk).update(status=LabelingProject.Status.FROZEN, frozen_version=version)
        AuditEvent.record(user, "labeling.frozen", project, {"version": version.pk, "number": version.number,
                                                              "labels_changed": counts["changed"]})
    return version
