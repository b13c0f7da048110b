"""Labeling test data: a real dataset version (through the real ingest), projects over it, and
labelers who answer by a rule."""
from lifecycle.labeling.models import LabelingProject
from tests.conftest import make_user
from tests.runs.factories import ingest_rows

LABELS = ["billing", "shipping", "refund"]


def rows(n, labels=LABELS):
    # Distinct wording per row: the ingest's near-duplicate detection leaves them all alone.
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
    return [{"text": f"message {i}: {words[i % len(words)]} {words[(i * 7) % len(words)]} {words[(i * 3) % len(words)]} "
                     f"order {i * 7919 % 100000}", "label": labels[i % len(labels)], "customer_id": f"c{i}"}
            for i in range(n)]


def labeled_version(tmp_path, user, n=60, labels=LABELS, slug="tickets"):
    return ingest_rows(tmp_path, user, rows(n, labels), slug=slug)


def make_project(version, user, **fields):
    fields = {"name": "Tickets review", "label_set": list(version.label_set), "overlap": 2, "gold_share": 0.1,
              "min_gold_answers": 1, **fields}
    return LabelingProject.create(user, version, **fields)


def make_labelers(n, prefix="lab"):
    return [make_user(f"{prefix}-{i}", "labeler") for i in range(n)]


def label_queue(project, user, choose, limit=None):
    """Pull and answer until the queue is empty (or `limit` answers); `choose(assignment)` returns
    the label. Returns the answered assignments."""
    answered = []
    while limit is None or len(answered) < limit:
        assignment = project.next_for(user)
        if assignment is None:
            break
        assignment.answer(label=choose(assignment))
        answered.append(assignment)
    return answered


def true_label(assignment):
    """The version's own label: what a perfect labeler says."""
    return assignment.item.example.label
