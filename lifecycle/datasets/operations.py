"""Version operations: a child version made from its parent's rows — redacted, without its
duplicates, split again; the labeling app's frozen labels and the monitoring app's retrain
export are children too (derive_version with a transform of their own).

A child streams its parent's rows batch by batch through a transform into a VersionWriter;
reports that depend on every row (leakage) are computed after the last batch.
"""
import json

import numpy as np
import pyarrow.parquet as pq

from lifecycle.datasets import dedup, duplicates, pii, queries, splits
from lifecycle.datasets.models import SPLIT_ALIASES, SPLIT_NAMES, DatasetVersion
from lifecycle.datasets.versions import VersionWriter, iter_row_batches, row_sha256


def derive_version(parent, operation, transform, *, user=None, reports=None, pii_status=None, has_leakage=None,
                   label_set=None, late_reports=None):
    """Make a child of `parent` by passing its rows, batch by batch, through `transform`
    (which returns the new batch, possibly with fewer rows; it must not query the database:
    the rows are streaming into it, see VersionWriter). `late_reports()`, if given, runs
    after the last batch and may replace reports that depend on every row (leakage)."""
    writer = VersionWriter(parent.dataset, operation=operation, parent=parent, user=user, source_sha256=parent.source_sha256)
    reports = reports if reports is not None else inherited_reports(parent)
    try:
        for batch in iter_row_batches(parent):
            # A parent written before origin_row was kept: its row is the identity (right for
            # an upload; for any other parent, DatasetVersion.origin() says the family has none).
            batch.setdefault("origin_row", batch.pop("row"))
            new = transform(batch)
            if new["text"]:
                writer.add(new)
        writer.end_rows()  # late_reports may query the database
        if late_reports:
            reports = reports | late_reports()
            has_leakage = bool(reports["leakage"]["has_leakage"])
    except BaseException:
        writer.discard()
        raise
    return writer.commit(
        reports=reports,
        label_set=label_set if label_set is not None else parent.label_set,
        pii_status=pii_status or parent.pii_status,
        has_leakage=parent.has_leakage if has_leakage is None else has_leakage,
    )


def inherited_reports(parent):
    return {"validation": parent.validation_report, "pii": parent.pii_report, "dedup": parent.dedup_report,
            "leakage": parent.leakage_report}


def rehash_row(batch, i):
    return row_sha256(batch["text"][i], batch["response"][i] or "", batch["label"][i] or "", batch["group"][i] or "",
                      batch["timestamp"][i], batch["metadata"][i] or "{}")


def redact_version(parent, *, user=None):
    """A child with every PII match replaced by its typed placeholder (<EMAIL>, …)."""
    after = pii.PiiReport()

    def transform(batch):
        for i in range(len(batch["text"])):
            batch["text"][i] = pii.redact(batch["text"][i])
            batch["response"][i] = pii.redact(batch["response"][i] or "")
            both = batch["text"][i] + ("\n" + batch["response"][i] if batch["response"][i] else "")
            found = pii.scan(both)
            after.add(i, found)
            batch["pii_kinds"][i] = ",".join(sorted({m.kind for m in found}))
            batch["content_key"][i] = dedup.exact_key(both)
            batch["row_sha256"][i] = rehash_row(batch, i)
        return batch

    reports = inherited_reports(parent) | {"pii": {"redacted_from": parent.pii_report.get("counts", {}), **after.to_dict()}}
    status = DatasetVersion.PiiStatus.REDACTED if after.rows_with_pii == 0 else DatasetVersion.PiiStatus.FOUND
    return derive_version(parent, DatasetVersion.Operation.REDACT, transform, user=user, reports=reports, pii_status=status)


def remove_duplicates(parent, *, user=None):
    """A child keeping one row of every duplicate set: its representative (the first row)."""
    offset, keys, groups, split_ids = 0, [], [], []

    def transform(batch):
        nonlocal offset
        keep = [i for i, cluster in enumerate(batch["duplicate_cluster"]) if cluster is None or cluster == offset + i]
        offset += len(batch["text"])
        kept = {name: [values[i] for i in keep] for name, values in batch.items()}
        kept["duplicate_cluster"] = [None] * len(keep)
        keys.extend(kept["content_key"])
        groups.extend(kept["group"])
        split_ids.extend(SPLIT_NAMES.index(s) for s in kept["split"])
        return kept

    def leakage_after():
        group_codes = _codes(groups)
        leak = splits.leakage_report(np.asarray(split_ids, dtype=np.int8), exact_keys=np.asarray(keys, dtype=np.int64),
                                     near_pairs=np.empty((0, 2), dtype=np.int64),
                                     groups=group_codes if (group_codes >= 0).any() else None)
        return leak | {"splits_from": parent.leakage_report.get("splits_from", "")}

    removed = parent.dedup_report.get("removable_rows", 0)
    reports = inherited_reports(parent) | {"dedup": {"removed_rows": removed, "from_version": parent.number,
                                                      "exact_duplicate_rows": 0, "near_duplicate_pairs": 0}}
    return derive_version(parent, DatasetVersion.Operation.DEDUP, transform, user=user, reports=reports,
                          late_reports=lambda: {"leakage": leakage_after()})


def _codes(values, ids=None):
    """Each value's id in order of first appearance (-1 for none), ids carried across calls."""
    ids = {} if ids is None else ids
    return np.asarray([ids.setdefault(v, len(ids)) if v else -1 for v in values], dtype=np.int64)


class SplitColumnInvalid(ValueError):
    """The column chosen to give the splits does not name one for every row."""


def resplit_version(parent, options, *, user=None):
    """A child with the same rows and a new split under `options` (splits.split_again). The
    near-duplicate pairs are not stored, so the pipeline's duplicate search runs again on the
    parent's rows: the split keeps whole duplicate components together as an upload does,
    and the leakage report counts the near-duplicate pairs that cross."""
    with queries.Scratch() as scratch:
        rows = queries.stage_version(scratch, parent)
        found = duplicates.find(scratch, rows)
        labels, groups, keys, given = _split_inputs(scratch.rows_path, options.column)
        assigned, leak = splits.split_again(labels, groups=groups, keys=keys, units=found.units,
                                            near_pairs=found.near_pairs(scratch), options=options,
                                            given=_given_splits(given, options.column) if options.column else None)
    offset = 0

    def transform(batch):
        nonlocal offset
        n = len(batch["text"])
        batch["split"] = [SPLIT_NAMES[s] for s in assigned[offset:offset + n]]
        offset += n
        return batch

    reports = inherited_reports(parent) | {"leakage": leak}
    return derive_version(parent, DatasetVersion.Operation.RESPLIT, transform, user=user, reports=reports,
                          has_leakage=bool(leak["has_leakage"]))


def _split_inputs(path, column):
    """Label and group codes, exact keys (numpy arrays) and the values of the split column,
    a batch at a time from the staged rows."""
    label_ids, group_ids, parts = {}, {}, {"label": [], "group": [], "key": [], "given": []}
    columns = ["label", "group", "content_key"] + (["metadata"] if column else [])
    for batch in pq.ParquetFile(path).iter_batches(columns=columns):
        rows = batch.to_pydict()
        parts["label"].append(_codes(rows["label"], label_ids))
        parts["group"].append(_codes(rows["group"], group_ids))
        parts["key"].append(np.asarray(rows["content_key"], dtype=np.int64))
        if column:
            parts["given"] += [json.loads(m or "{}").get(column) for m in rows["metadata"]]
    return (*(np.concatenate([np.zeros(0, np.int64), *parts[name]]) for name in ("label", "group", "key")),
            parts["given"])


def _given_splits(values, column):
    given = [SPLIT_ALIASES.get(str(v).strip().lower(), -1) if v is not None else -1 for v in values]
    missing = next((row for row, split in enumerate(given) if split < 0), None)
    if missing is not None:
        raise SplitColumnInvalid(f"the column “{column}” names no split (train, validation or test) in row {missing} "
                                 f"(value {values[missing]!r}); nothing was made")
    return given
