"""Version operations: a child version made from its parent's rows — redacted, without its
duplicates, split again; the labeling app's frozen labels and the monitoring app's retrain
export are children too (derive_version with a transform of their own).

A child streams its parent's rows batch by batch through a transform into a VersionWriter;
reports that depend on every row (leakage) are computed after the last batch.

What a report did not check. A report (pii, dedup, leakage) holds a field only where its
check ran on this version's rows, or is inherited from a parent with the same rows in the
same splits (frozen labels change labels only; a redaction keeps its parent's duplicate
and leakage reports, found on the text before redaction, and the page says so). A check
that did not run leaves its field out and says why in the report's
"not_checked": {field: why}. The fields the pages read are models.CHECKED_FIELDS; a page
shows "not checked — why" for a missing one, never a default 0 (DatasetVersion.not_checked).
An upload's reports (ingest.py) run every check.
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
    after the last batch and may replace reports that depend on every row (leakage); so
    does `pii_status` where it is a function (a redaction's status is its own scan's)."""
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
        pii_status=(pii_status() if callable(pii_status) else pii_status) or parent.pii_status,
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
    offset = 0

    def transform(batch):
        nonlocal offset
        batch["text"] = [pii.redact(text) for text in batch["text"]]
        batch["response"] = [pii.redact(response or "") for response in batch["response"]]
        texts = [text + ("\n" + response if response else "") for text, response in zip(batch["text"], batch["response"])]
        found_in = []
        for i, (both, found) in enumerate(zip(texts, pii.scan_many(texts))):
            if found:
                found_in.append((i, found))
            batch["pii_kinds"][i] = ",".join(sorted({m.kind for m in found}))
            batch["content_key"][i] = dedup.exact_key(both)
            batch["row_sha256"][i] = rehash_row(batch, i)
        # A redaction keeps every row in its place: the child's row is the parent's.
        after.add_rows(offset, len(batch["text"]), found_in)
        offset += len(batch["text"])
        return batch

    def status():
        return DatasetVersion.PiiStatus.REDACTED if after.rows_with_pii == 0 else DatasetVersion.PiiStatus.FOUND

    # The child's own scan is complete only after the last batch.
    return derive_version(parent, DatasetVersion.Operation.REDACT, transform, user=user, pii_status=status,
                          late_reports=lambda: {"pii": {"redacted_from": parent.pii_report.get("counts", {}),
                                                        **after.to_dict()}})


def remove_duplicates(parent, *, user=None):
    """A child keeping one row of every duplicate set: its representative (the first row).

    Its dedup report counts the rows removed and the exact duplicates still among the rows
    kept (their content keys); near duplicates are not searched for again (_not_searched)."""
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
                                     near_pairs=None, groups=group_codes if (group_codes >= 0).any() else None)
        return leak | {"splits_from": parent.leakage_report.get("splits_from", ""),
                       "not_checked": {"near_duplicates": _not_searched(parent)}}

    def late_reports():
        return {"dedup": _dedup_after(parent, offset - len(keys), keys), "leakage": leakage_after()}

    return derive_version(parent, DatasetVersion.Operation.DEDUP, transform, user=user, late_reports=late_reports)


def _not_searched(parent):
    return (f"not searched for again: these are v{parent.number}'s rows less the later rows of each of its duplicate "
            "sets, so no pair its search found is left whole here, but these rows alone were not searched")


def _dedup_after(parent, removed, keys):
    """The dedup report of a child without its parent's duplicates: what was removed, and the
    exact duplicates left among the rows kept (keep-first can leave some: two rows that repeat a
    removed row, say, where the search paired neither with the first row of its set)."""
    exact = dedup.exact_duplicate_summary(dedup.first_rows(np.asarray(keys, dtype=np.int64)))
    return {"removed_rows": removed, "from_version": parent.number, "exact_duplicate_rows": exact["rows"],
            "exact_groups": exact["groups"], "examples": exact["examples"],
            "not_checked": {"near_duplicate_pairs": _not_searched(parent),
                            "removable_rows": "these rows were not put into duplicate sets again: only exact "
                                              "duplicates were counted, and near ones were not searched for"}}


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
