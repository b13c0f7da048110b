"""What changed between two versions: rows added, removed and relabeled, matched by content
(the normalized text's key), and how the label distribution moved."""
from django.db.models import Exists, OuterRef, Subquery

LIMIT = 50


def _label_totals(version):
    totals = {}
    for labels in version.split_counts().values():
        for label, count in labels.items():
            totals[label] = totals.get(label, 0) + count
    return totals


def _missing_from(version, other):
    """Examples of `version` whose content appears nowhere in `other` (an anti-join)."""
    same = other.examples.filter(content_key=OuterRef("content_key"))
    return version.examples.filter(~Exists(same))


def _relabeled(old, new):
    """Rows of `new` whose content is in `old` under another label."""
    other_label = old.examples.filter(content_key=OuterRef("content_key")).exclude(label=OuterRef("label"))
    same_label = old.examples.filter(content_key=OuterRef("content_key"), label=OuterRef("label"))
    return (new.examples.filter(Exists(other_label)).exclude(Exists(same_label))
            .annotate(old_label=Subquery(other_label.values("label")[:1])))


def compare(old, new):
    added, removed, relabeled = _missing_from(new, old), _missing_from(old, new), _relabeled(old, new)
    old_totals, new_totals = _label_totals(old), _label_totals(new)
    labels = sorted(set(old_totals) | set(new_totals))
    return {
        "added_count": added.count(), "removed_count": removed.count(), "relabeled_count": relabeled.count(),
        "added": list(added.order_by("row")[:LIMIT]), "removed": list(removed.order_by("row")[:LIMIT]),
        "relabeled": list(relabeled.order_by("row")[:LIMIT]),
        "labels": labels,
        "old_counts": [old_totals.get(label, 0) for label in labels],
        "new_counts": [new_totals.get(label, 0) for label in labels],
        "label_changes": [(label, old_totals.get(label, 0), new_totals.get(label, 0),
                           new_totals.get(label, 0) - old_totals.get(label, 0)) for label in labels],
    }
