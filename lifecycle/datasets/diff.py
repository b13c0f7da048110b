"""What changed between two versions: rows added, removed and relabeled, matched by content
(the normalized text's key), and how the label distribution moved."""
from django.db.models import Exists, OuterRef

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
    return new.examples.filter(Exists(other_label)).exclude(Exists(same_label))


def _with_old_labels(rows, old):
    """Attach `old_label` to the listed rows with one query (not a subquery per row)."""
    labels = {}
    for key, label in old.examples.filter(content_key__in=[r.content_key for r in rows]).values_list("content_key", "label"):
        labels.setdefault(key, set()).add(label)
    for row in rows:
        row.old_label = ", ".join(sorted(labels.get(row.content_key, set()) - {row.label}))
    return rows


def compare(old, new):
    added, removed, relabeled = _missing_from(new, old), _missing_from(old, new), _relabeled(old, new)
    old_totals, new_totals = _label_totals(old), _label_totals(new)
    labels = sorted(set(old_totals) | set(new_totals))
    return {
        "added_count": added.count(), "removed_count": removed.count(), "relabeled_count": relabeled.count(),
        "added": list(added.order_by("row")[:LIMIT]), "removed": list(removed.order_by("row")[:LIMIT]),
        "relabeled": _with_old_labels(list(relabeled.order_by("row")[:LIMIT]), old),
        "labels": labels,
        "old_counts": [old_totals.get(label, 0) for label in labels],
        "new_counts": [new_totals.get(label, 0) for label in labels],
        "label_changes": [(label, old_totals.get(label, 0), new_totals.get(label, 0),
                           new_totals.get(label, 0) - old_totals.get(label, 0)) for label in labels],
    }
