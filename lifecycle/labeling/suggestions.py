"""Model suggestions: a trained classification run predicts every item of a project; the review
page shows its label and confidence, the table filters on low confidence. Runs on the training
queue (it loads torch and the run's output)."""
from lifecycle.labeling.models import Item, LabelingError

BATCH = 256


def check_run(project, run, *, wait_for_run=False):
    """Why `run` cannot suggest labels for `project` (a list; empty when it can)."""
    problems = []
    if run.task != "classification":
        problems.append("Only a classification run can suggest labels.")
    if run.dataset_version.dataset_id != project.version.dataset_id:
        problems.append("The run was trained on another dataset.")
    if not wait_for_run and not run.output_sha256:
        problems.append("The run has no trained output yet.")
    return problems


def suggest(project, run, progress=lambda done, total: None):
    from lifecycle.runs.outputs import Predictor

    if not run.output_sha256:
        raise LabelingError(f"run {run.pk} has no trained output (it is {run.status})")
    predictor = Predictor(run.output_sha256)
    allowed = set(project.label_set)
    items = Item.objects.filter(project=project).select_related("example").only("pk", "example__text").order_by("pk")
    total, done = project.item_count, 0
    last = 0
    while True:
        batch = list(items.filter(pk__gt=last)[:BATCH])
        if not batch:
            break
        for item, (label, confidence) in zip(batch, predictor.predict([i.example.text for i in batch])):
            # A label outside the project's set is no help to a labeler: no suggestion.
            item.suggested_label, item.suggested_confidence = (label, confidence) if label in allowed else ("", None)
        Item.objects.bulk_update(batch, ["suggested_label", "suggested_confidence"])
        last, done = batch[-1].pk, done + len(batch)
        progress(done, total)
    return done
