"""The ingest pipeline: a file in, an immutable dataset version (or a clear refusal) out.

    read and validate → PII → exact and near-duplicate keys → duplicate sets → splits
         → leakage → write (and a redacted child under the "redact" policy)

The first three happen in one streaming pass (ingest.py: each batch validated, scanned for
PII and hashed); the rest query what it staged in the scratch folder (queries.py), which is
removed with DuckDB's spill files when the pipeline ends, however it ends. Each step hands
the next a small typed result; docs/datasets.md walks them in this order.
"""
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lifecycle.datasets import duplicates, ingest, queries, splits
from lifecycle.datasets.ingest import IngestRejected
from lifecycle.datasets.models import SPLIT_NAMES, Dataset, DatasetVersion
from lifecycle.datasets.operations import redact_version
from lifecycle.datasets.versions import TextIndexWriter, VersionWriter


@dataclass
class Read:
    """The rows that passed validation, staged; the validation report; the PII found."""
    stage: ingest.Stage
    validation: dict
    pii: dict
    pii_found: bool


@dataclass
class Splits:
    assigned: np.ndarray  # 0 train, 1 validation, 2 test per row
    how: str  # "given", "by time" or "seeded (seed N)"
    leakage: dict


def upload(dataset, path, fmt, options, *, user=None, source_sha256="", progress=None):
    """Run the pipeline on a file; return the versions made (the raw one, and a redacted
    child under the "redact" policy)."""
    progress = progress or (lambda *args, **kwargs: None)
    with queries.Scratch() as scratch:
        read = read_and_validate(path, fmt, options, progress, scratch)
        check_pii(dataset, read)
        texts = TextIndexWriter.start(read.stage.path)  # the rows are final: indexed on the other core meanwhile
        try:
            progress("deduplicating", 0, 1)
            found = duplicates.find(scratch, read.stage.rows)
            split = choose_splits(scratch, read.stage, found, options, progress)
            scratch.done_querying()
            version = write(dataset, read, found, split, options, user, source_sha256, progress, texts)
        except queries.QueryFailed as exc:  # the file is fine; the room to check it was not
            raise IngestRejected(str(exc), read.validation) from None
        finally:
            if texts:
                texts.abandon()  # no-op once the version committed and the texts with it
    made = [version]
    if read.pii_found and dataset.pii_policy == Dataset.PiiPolicy.REDACT:
        progress("redacting", 0, version.row_count)
        made.append(redact_version(version, user=user))
    return made


def read_and_validate(path, fmt, options, progress, scratch):
    stage, problems = ingest.stage_file(path, fmt, options, progress, scratch)
    report = ingest.validation_report(stage, problems, options)
    try:
        ingest.check_validation(stage, problems, options)
    except IngestRejected as exc:
        raise IngestRejected(str(exc), report) from None
    return Read(stage, report, stage.pii.to_dict(), stage.pii.rows_with_pii > 0)


def check_pii(dataset, read):
    if read.pii_found and dataset.pii_policy == Dataset.PiiPolicy.BLOCK:
        kinds = ", ".join(f"{count:,} {kind}" for kind, count in sorted(read.stage.pii.counts.items()))
        raise IngestRejected(f"PII found in {read.stage.pii.rows_with_pii:,} rows ({kinds}) and this dataset's policy is "
                             "to block: clean the file, or change the policy to redact", read.validation | {"pii": read.pii})


def choose_splits(scratch, stage, found, options, progress):
    """The split of each row (given by the file, by time, or seeded and stratified with whole
    duplicate components and groups kept together) and the leakage that remains."""
    progress("splitting", 0, 1)
    groups = queries.first_rows(scratch, "group_id", stage.rows, ignore_negative=True) \
        if scratch.sql(f"SELECT bool_or(group_id >= 0) FROM {scratch.facts()}").fetchall()[0][0] else None
    given, times = stage.column("split"), stage.column("time")
    if (given >= 0).all():
        assigned, how = given, "given"
    else:
        how = "by time" if options.by_time else f"seeded (seed {options.seed})"
        assigned = splits.assign_splits(stage.column("label"), groups=groups, units=found.units,
                                        timestamps=times if options.by_time else None,
                                        fractions=options.fractions, seed=options.seed, by_time=options.by_time)
    progress("checking leakage", 0, 1)
    leak = splits.leakage_report(assigned, exact_keys=found.first, near_pairs=found.near_pairs(scratch), groups=groups,
                                 timestamps=times if len(times) and not np.isnan(times).any() else None)
    return Splits(assigned, how, leak | {"splits_from": how})


def write(dataset, read, found, split, options, user, source_sha256, progress, texts):
    """The staged rows with their split and duplicate set, as a new version."""
    writer = VersionWriter(dataset, operation=DatasetVersion.Operation.UPLOAD, user=user, source_sha256=source_sha256,
                           texts=texts)
    names, offset, total = np.asarray(SPLIT_NAMES), 0, read.stage.rows
    progress("writing", 0, total)
    try:
        for batch in pq.ParquetFile(read.stage.path).iter_batches(batch_size=ingest.BATCH):
            part = slice(offset, offset + batch.num_rows)
            cluster = found.clusters[part].astype(np.int64)
            table = pa.Table.from_batches([batch]).append_column("split", pa.array(names[split.assigned[part]]))
            writer.add(table.append_column("duplicate_cluster", pa.array(cluster, mask=cluster < 0)))
            offset += batch.num_rows
            progress("writing", offset, total)
    except BaseException:
        writer.discard()
        raise
    label_set = list(options.label_set) if options.label_set else sorted(read.stage.labels)
    reports = {"validation": read.validation, "pii": read.pii, "dedup": found.report, "leakage": split.leakage}
    status = DatasetVersion.PiiStatus.FOUND if read.pii_found else DatasetVersion.PiiStatus.CLEAN
    return writer.commit(reports=reports, label_set=label_set, pii_status=status,
                         has_leakage=bool(split.leakage["has_leakage"]))
