"""Quality control of a labeling project: who is reliable, which labels are, and whether the
whole set agrees well enough to become a training version.

Reads every answer once into integer arrays and hands them to `agreement` (numpy, checked
against scikit-learn, statsmodels and the krippendorff package). Run by `tasks.compute_qc`
on the monitoring queue; the result is one `QCReport` row.
"""
import math

import numpy as np
from django.contrib.auth import get_user_model
from django.db import transaction
from django.template.defaultfilters import pluralize
from django.utils import timezone

from lifecycle.labeling import agreement
from lifecycle.labeling.models import Assignment, Item, QCReport

# Too little evidence to call anyone unreliable: fewer items shared with others than this,
# or fewer answer pairs behind a label's agreement.
MIN_SHARED = 10
MIN_LABEL_PAIRS = 10


def _number(value, digits=4):
    """JSON has no NaN: undefined statistics are stored as None."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def load_answers(project):
    """The project's answers (not pending ones) as parallel numpy arrays."""
    rows = (Assignment.objects.filter(project=project, state__in=[Assignment.State.ANSWERED, Assignment.State.SKIPPED])
            .values_list("item_id", "annotator_id", "state", "label", "flagged", "seconds"))
    items, annotators, states, labels, flagged, seconds = zip(*rows) if rows else ((),) * 6
    label_index = {label: i for i, label in enumerate(project.label_set)}
    return {
        "item": np.asarray(items, dtype=np.int64),
        "annotator": np.asarray(annotators, dtype=np.int64),
        "answered": np.asarray([s == Assignment.State.ANSWERED for s in states], dtype=bool),
        "label": np.asarray([label_index.get(label, -1) for label in labels], dtype=np.int64),
        "flagged": np.asarray(flagged, dtype=bool),
        "seconds": np.asarray([math.nan if s is None else s for s in seconds], dtype=np.float64),
    }


def _gold(project):
    """item id → gold label index, for the project's gold items."""
    label_index = {label: i for i, label in enumerate(project.label_set)}
    rows = Item.objects.filter(project=project, is_gold=True).values_list("pk", "gold_label")
    return {pk: label_index.get(label, -1) for pk, label in rows}


def compute(project, job=None):
    started = timezone.now()
    answers = load_answers(project)
    data = statistics(project, answers, _gold(project))
    data["progress"] = project.progress()
    reasons = freeze_reasons(project, data, data["progress"])
    data["reasons"] = reasons
    with transaction.atomic():
        return QCReport.objects.create(project=project, job=job, started_at=started,
                                       answers=int(answers["answered"].sum()), passes=not reasons, data=data)


def statistics(project, answers, gold):
    labeled = answers["answered"] & (answers["label"] >= 0)
    ids, raters = np.unique(answers["annotator"], return_inverse=True)
    _, items = np.unique(answers["item"], return_inverse=True)
    n_labels = len(project.label_set)
    it, rt, lb = items[labeled], raters[labeled], answers["label"][labeled]
    pairs = agreement.pairwise_kappa(it, rt, lb, len(ids), n_labels)
    confusion = agreement.pair_confusion(it, rt, lb, n_labels)
    per_label = agreement.label_agreement(confusion)
    fleiss, fleiss_items = (agreement.fleiss_kappa(*_non_gold(answers, labeled, items, gold), n_labels, project.overlap)
                            if project.overlap >= 2 else (math.nan, 0))
    names = dict(get_user_model().objects.filter(pk__in=ids.tolist()).values_list("pk", "username"))
    annotators = _annotators(project, answers, labeled, raters, ids, names, gold, pairs)
    labels = [{"label": label, "pairs": int(confusion[i].sum()), "agreement": _number(per_label[i]),
               "unreliable": bool(confusion[i].sum() >= MIN_LABEL_PAIRS and per_label[i] < project.min_label_agreement)}
              for i, label in enumerate(project.label_set)]
    return {
        "labels": labels,
        "annotators": annotators,
        "pairs": [{"a": names.get(int(ids[i]), "?"), "b": names.get(int(ids[j]), "?"), "items": int(n),
                   "kappa": _number(k)} for i, j, n, k in pairs],
        "fleiss_kappa": _number(fleiss), "fleiss_items": int(fleiss_items),
        "alpha": _number(agreement.krippendorff_alpha(it, lb, n_labels)),
        "confusion": confusion.tolist(),
        "thresholds": {"min_gold_accuracy": project.min_gold_accuracy, "min_kappa": project.min_kappa,
                       "min_alpha": project.min_alpha, "min_label_agreement": project.min_label_agreement,
                       "min_gold_answers": project.min_gold_answers},
    }


def _non_gold(answers, labeled, items, gold):
    """Items and labels of the answers on non-gold items: Fleiss' kappa wants a fixed number of
    raters per item, and gold items are seen by every labeler."""
    keep = labeled & ~np.isin(answers["item"], np.fromiter(gold, dtype=np.int64, count=len(gold)))
    return items[keep], answers["label"][keep]


def _annotators(project, answers, labeled, raters, ids, names, gold, pairs):
    gold_items = np.fromiter(gold, dtype=np.int64, count=len(gold))
    gold_labels = np.fromiter(gold.values(), dtype=np.int64, count=len(gold))
    on_gold = labeled & np.isin(answers["item"], gold_items)
    expected = np.empty(0, dtype=np.int64)
    if len(gold_items):
        order = np.argsort(gold_items)
        expected = gold_labels[order][np.searchsorted(gold_items[order], answers["item"][on_gold])]
    correct = np.zeros(len(answers["item"]), dtype=bool)
    correct[np.flatnonzero(on_gold)] = answers["label"][on_gold] == expected
    kappas = _mean_kappas(pairs, len(ids))
    result = []
    for r, pk in enumerate(ids):
        mine = raters == r
        result.append(_annotator(project, names.get(int(pk), "?"), answers, mine, labeled, on_gold, correct, kappas[r]))
    return sorted(result, key=lambda a: a["username"])


def _mean_kappas(pairs, n):
    """Each annotator's kappa with the others, weighted by the items each pair shares."""
    total, weight = np.zeros(n), np.zeros(n)
    for i, j, shared, kappa in pairs:
        if math.isfinite(kappa):
            for r in (i, j):
                total[r] += kappa * shared
                weight[r] += shared
    return [(total[r] / weight[r] if weight[r] else math.nan, int(weight[r])) for r in range(n)]


def _annotator(project, username, answers, mine, labeled, on_gold, correct, kappa):
    gold_answers = int((mine & on_gold).sum())
    gold_correct = int((mine & correct).sum())
    accuracy = gold_correct / gold_answers if gold_answers else math.nan
    seconds = answers["seconds"][mine & answers["answered"]]
    seconds = seconds[np.isfinite(seconds)]
    mean_kappa, shared = kappa
    reasons = []
    if gold_answers >= project.min_gold_answers and accuracy < project.min_gold_accuracy:
        reasons.append(f"gold accuracy {accuracy:.2f} < {project.min_gold_accuracy:.2f}")
    if shared >= MIN_SHARED and mean_kappa < project.min_kappa:
        reasons.append(f"kappa with the others {mean_kappa:.2f} < {project.min_kappa:.2f}")
    return {
        "username": username,
        "answers": int((mine & answers["answered"]).sum()),
        "labeled": int((mine & labeled).sum()),
        "skips": int((mine & ~answers["answered"]).sum()),
        "flags": int((mine & answers["flagged"]).sum()),
        "gold_answers": gold_answers, "gold_correct": gold_correct, "gold_accuracy": _number(accuracy),
        "median_seconds": _number(float(np.median(seconds)) if len(seconds) else math.nan, 2),
        "mean_kappa": _number(mean_kappa), "shared_items": shared,
        "unreliable": bool(reasons), "reasons": reasons,
    }


def freeze_reasons(project, data, progress):
    """Why the labels may not become a version yet; empty when QC passes."""
    reasons = []
    alpha = data["alpha"]
    if project.overlap >= 2:
        if alpha is None:
            reasons.append("Agreement cannot be measured yet: no example has two answers.")
        elif alpha < project.min_alpha:
            reasons.append(f"Krippendorff's alpha {alpha:.3f} is below the threshold {project.min_alpha:.3f}.")
    for annotator in data["annotators"]:
        if annotator["unreliable"]:
            reasons.append(f"Annotator {annotator['username']} is unreliable: {'; '.join(annotator['reasons'])}.")
    for label in data["labels"]:
        if label["unreliable"]:
            reasons.append(f"Label {label['label']!r} is unreliable: annotators agree on it "
                           f"{label['agreement']:.0%} of the time (threshold {project.min_label_agreement:.0%}).")
    states = progress["states"]
    unfinished = states[Item.State.OPEN] + states[Item.State.TIE] + states[Item.State.FLAGGED]
    if unfinished:
        ties = states[Item.State.TIE]
        has = "has" if unfinished == 1 else "have"
        reasons.append(f"{unfinished} example{pluralize(unfinished)} {has} no final label yet "
                       f"({states[Item.State.OPEN]} waiting for answers, {ties} tie{pluralize(ties)} and "
                       f"{states[Item.State.FLAGGED]} flagged to adjudicate).")
    return reasons
