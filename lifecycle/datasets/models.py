import hashlib
from functools import cached_property

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.urls import reverse

from lifecycle.core.models import AuditEvent, Job, canonical_json

SPLIT_NAMES = ("train", "validation", "test")
# The names a split column's values may use (the ingest reads the same).
SPLIT_ALIASES = {"train": 0, "training": 0, "validation": 1, "valid": 1, "val": 1, "dev": 1, "test": 2, "testing": 2}
JOIN_NAMES = {"groups": "groups", "exact_duplicates": "exact duplicates", "near_duplicates": "near duplicates",
              "duplicate_sets": "duplicate sets (exact or near)"}
# The report fields that hold a check's result, as the pages read them: one left out (or null)
# is a check that did not run, and the report's "not_checked" says why (operations.py).
CHECKED_FIELDS = {
    "pii": ("rows_with_pii",),
    "dedup": ("exact_duplicate_rows", "near_duplicate_pairs", "removable_rows"),
    "leakage": ("exact_duplicates", "near_duplicates"),
}
NO_RECORD = "this version's report holds no result for it"


def _seed_of(splits_from):
    """The seed in an older report's "seeded (seed N)"; 0 where there is none."""
    digits = splits_from.partition("(seed ")[2].partition(")")[0]
    return int(digits) if digits.isdigit() else 0


class DatasetQuerySet(models.QuerySet):
    def with_latest(self):
        """Annotate each dataset with its newest version's number, rows and flags (one query)."""
        latest = DatasetVersion.objects.filter(dataset=models.OuterRef("pk")).order_by("-number")
        return self.annotate(
            latest_number=models.Subquery(latest.values("number")[:1]),
            latest_rows=models.Subquery(latest.values("row_count")[:1]),
            latest_pii=models.Subquery(latest.values("pii_status")[:1]),
            latest_leakage=models.Subquery(latest.values("has_leakage")[:1]),
            version_count=models.Count("versions", distinct=True),
        )


class Dataset(models.Model):
    class Task(models.TextChoices):
        CLASSIFICATION = "classification", "Text classification (text → label)"
        SFT = "sft", "Instruction pairs (prompt → response)"

    class PiiPolicy(models.TextChoices):
        BLOCK = "block", "Block: no version until the data is cleaned"
        REDACT = "redact", "Redact: a child version with typed placeholders"
        ALLOW = "allow", "Allow, with an approver's recorded sign-off"

    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    task = models.CharField(max_length=20, choices=Task.choices, default=Task.CLASSIFICATION)
    # Empty: the label set is whatever the first version holds; later uploads must stay inside it.
    label_set = models.JSONField(default=list, blank=True)
    max_labels = models.PositiveIntegerField(default=100, validators=[MinValueValidator(2), MaxValueValidator(10_000)])
    max_text_chars = models.PositiveIntegerField(default=20_000, validators=[MinValueValidator(10), MaxValueValidator(1_000_000)])
    pii_policy = models.CharField(max_length=10, choices=PiiPolicy.choices, default=PiiPolicy.REDACT)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = DatasetQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("datasets:detail", args=[self.slug])

    @property
    def required_columns(self):
        return ("text", "label") if self.task == self.Task.CLASSIFICATION else ("prompt", "response")

    @classmethod
    def create(cls, user, **fields):
        with transaction.atomic():
            dataset = cls.objects.create(created_by=user, **fields)
            AuditEvent.record(user, "dataset.created", dataset, {"slug": dataset.slug, "task": dataset.task, "pii_policy": dataset.pii_policy})
        return dataset

    def set_policy(self, user, policy):
        with transaction.atomic():
            old = Dataset.objects.select_for_update().get(pk=self.pk).pii_policy
            Dataset.objects.filter(pk=self.pk).update(pii_policy=policy)
            AuditEvent.record(user, "dataset.pii_policy_changed", self, {"from": old, "to": policy})
        self.pii_policy = policy


class VersionQuerySet(models.QuerySet):
    def for_listing(self):
        return self.select_related("created_by", "parent").defer("manifest", "pii_report", "dedup_report", "validation_report")


class DatasetVersion(models.Model):
    """An immutable snapshot of a dataset. Rows live in the artifact store as Parquet (the
    truth) and in `Example` rows (for browsing and labeling). Any edit makes a child version;
    the database refuses UPDATE on this table and on examples (migration 0002)."""

    class Operation(models.TextChoices):
        UPLOAD = "upload"
        REDACT = "redact"
        DEDUP = "dedup"
        RESPLIT = "resplit"
        RELABEL = "relabel"
        FEEDBACK = "feedback"  # a deployment's feedback corrections folded in (monitoring/retrain.py)

    class PiiStatus(models.TextChoices):
        CLEAN = "clean", "no PII found"
        FOUND = "found", "PII found"
        REDACTED = "redacted", "PII redacted"

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    operation = models.CharField(max_length=20, choices=Operation.choices)
    rows_sha256 = models.CharField(max_length=64)
    rows_bytes = models.BigIntegerField()
    source_sha256 = models.CharField(max_length=64, blank=True)
    row_count = models.PositiveIntegerField()
    content_sha256 = models.CharField(max_length=64)
    manifest = models.JSONField()
    manifest_sha256 = models.CharField(max_length=64, unique=True)
    label_set = models.JSONField(default=list)
    validation_report = models.JSONField(default=dict)
    pii_report = models.JSONField(default=dict)
    pii_status = models.CharField(max_length=10, choices=PiiStatus.choices)
    dedup_report = models.JSONField(default=dict)
    leakage_report = models.JSONField(default=dict)
    has_leakage = models.BooleanField(db_index=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()

    objects = VersionQuerySet.as_manager()

    class Meta:
        ordering = ["dataset", "-number"]
        constraints = [models.UniqueConstraint(fields=["dataset", "number"], name="version_number_unique")]

    def __str__(self):
        return f"{self.dataset.slug} v{self.number}"

    def get_absolute_url(self):
        return reverse("datasets:version", args=[self.dataset.slug, self.number])

    def save(self, *args, **kwargs):
        if not self._state.adding:  # not pk: an upload's version comes with its id reserved
            raise RuntimeError("dataset versions are immutable; make a child version instead")
        super().save(*args, **kwargs)

    @staticmethod
    def hash_manifest(manifest):
        return hashlib.sha256(canonical_json(manifest).encode()).hexdigest()

    @property
    def needs_pii_signoff(self):
        return self.pii_status == self.PiiStatus.FOUND and self.dataset.pii_policy == Dataset.PiiPolicy.ALLOW

    @property
    def pii_signed_off(self):
        return hasattr(self, "pii_signoff")

    @cached_property
    def not_checked(self):
        """{report: {field: why}} for the checks that did not run on this version (empty
        where every check ran), for the pages to say "not checked" instead of a number."""
        reports = {"pii": self.pii_report, "dedup": self.dedup_report, "leakage": self.leakage_report}
        missing = {}
        for name, fields in CHECKED_FIELDS.items():
            report = reports[name] or {}
            why = report.get("not_checked") or {}
            missing[name] = {field: why.get(field, NO_RECORD) for field in fields if report.get(field) is None}
        return missing

    @property
    def usable_for_training(self):
        return not self.training_blockers()

    def training_blockers(self):
        """Why this version may not be trained on (empty: it may): PII found and not signed
        off, leakage across splits, or splits that fall short of their fractions."""
        blockers = []
        if self.pii_status == self.PiiStatus.FOUND and not self.pii_signed_off:
            blockers.append("PII not cleared: redact it or get an approver's sign-off")
        if self.has_leakage:
            blockers.append("leakage across splits: split it again")
        if self.split_meets_fractions is False:
            blockers.append(f"the split cannot meet its fractions ({self.split_problem()})")
        return blockers

    def split_rows(self):
        """(split, rows) in train, validation, test order, leaving out empty ones."""
        rows = self.leakage_report.get("rows", {})
        return [(name, rows[name]) for name in (*SPLIT_NAMES, "unassigned") if rows.get(name)]

    def rows_kept(self):
        """(rows kept, rows they were kept from, from what): a child's own rows of its
        parent's; an upload's valid rows of the rows its file held."""
        if self.parent_id and self.operation != self.Operation.UPLOAD:
            return self.row_count, self.parent.row_count, f"v{self.parent.number}"
        report = self.validation_report
        return report.get("rows_kept", self.row_count), report.get("rows_read", self.row_count), "the file"

    @property
    def split_feasibility(self):
        return self.leakage_report.get("feasibility")

    @property
    def split_meets_fractions(self):
        """True or False; None where nothing was checked: a version made before the check, or
        splits the data gave (no fractions to meet)."""
        report = self.split_feasibility
        if not report or self.leakage_report.get("splits_from") == "given":
            return None
        return report.get("meets_fractions")

    def split_problem(self):
        """The shortfall in words: which splits, and what joined the rows into big units."""
        report = self.split_feasibility or {}
        short = ", ".join(f"{name} {report['rows'][name]} of {report['targets'][name]:g} rows"
                          for name in report.get("short", []))
        units = report.get("units")
        if not units:
            return short
        total = sum(report["rows"].values())
        joined = " and ".join(JOIN_NAMES[kind] for kind in units["joined_by"]) or "nothing"
        return (f"{short}; the {total} rows form {units['count']} units that must stay whole, the largest "
                f"{units['largest']} rows ({units['largest'] * 100 // max(total, 1)} %), joined by {joined}")

    def split_alone(self):
        """(kind, largest unit) for each kind that joined rows, had it joined them alone."""
        units = (self.split_feasibility or {}).get("units") or {}
        return [(JOIN_NAMES[kind], size) for kind, size in units.get("largest_alone", {}).items()]

    @property
    def split_options(self):
        return self.leakage_report.get("split_options") or {"seed": _seed_of(self.leakage_report.get("splits_from", "")),
                                                            "keep_together": "all", "column": ""}

    def split_columns(self):
        """Columns kept as metadata whose value in the first row names a split: the ones
        offered to give the splits (the job checks every row)."""
        first = self.examples.order_by("row").values_list("metadata", flat=True).first() or {}
        return sorted(key for key, value in first.items()
                      if isinstance(value, str) and value.strip().lower() in SPLIT_ALIASES)

    def existing_child(self, operation, options=None):
        """The child this operation with these settings already made, or None. Redacting and
        removing duplicates have no settings; a split again has its SplitOptions."""
        children = self.children.filter(operation=operation).order_by("number")
        if operation != self.Operation.RESPLIT:
            return children.first()
        wanted = options.as_dict()
        for child in children.only("id", "number", "row_count", "leakage_report", "dataset_id"):
            if child.split_options == wanted:
                return child
        return None

    def split_counts(self):
        return self.manifest.get("counts", {})

    def origin(self):
        """The upload this version's rows descend from (itself for an upload), or None where
        some version on the way was written without `Example.origin_row`."""
        version = self
        while True:
            if "origin_row" not in version.manifest.get("schema", {}):
                return None
            if version.operation == self.Operation.UPLOAD or version.parent_id is None:
                return version
            version = DatasetVersion.objects.only("id", "parent_id", "operation", "manifest").get(pk=version.parent_id)


class PiiSignOff(models.Model):
    """An approver's recorded acceptance of the PII in one version (policy "allow")."""

    version = models.OneToOneField(DatasetVersion, on_delete=models.PROTECT, related_name="pii_signoff")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    @classmethod
    def sign(cls, version, approver, reason):
        with transaction.atomic():
            signoff = cls.objects.create(version=version, approver=approver, reason=reason)
            AuditEvent.record(approver, "dataset_version.pii_signed_off", version,
                              {"reason": reason, "pii": version.pii_report.get("counts", {})})
        return signoff


class ExampleQuerySet(models.QuerySet):
    def browse(self, *, split=None, label=None, pii=None, search=""):
        qs = self
        if split is not None:
            qs = qs.filter(split=split)
        if label is not None:
            qs = qs.filter(label=label)
        if pii is not None:
            qs = qs.filter(has_pii=pii)
        if search:
            qs = qs.matching(search)
        return qs

    def matching(self, search):
        from django.db import connection
        from django.db.models.expressions import RawSQL

        if connection.vendor == "postgresql":
            # Words, not substrings: served by ExampleText's GIN index (migration 0003).
            match = RawSQL("to_tsvector('simple', text) @@ plainto_tsquery('simple', %s)", [search],
                           output_field=models.BooleanField())
            words = ExampleText.objects.filter(version=models.OuterRef("version"), row=models.OuterRef("row"))
            return self.filter(models.Exists(words.alias(match=match).filter(match=True)))
        return self.filter(text__icontains=search)


class RowKeys(models.Model):
    """Where a version's row keys are: a small Parquet artifact of each row's identity, content
    key, hash and split (diff.ROW_KEYS), which is all the diff reads to find what changed.
    Written with the version; for a version made before, on its first diff (the version row
    itself never changes)."""

    version = models.OneToOneField(DatasetVersion, on_delete=models.CASCADE, primary_key=True, related_name="row_keys")
    keys_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)


class Example(models.Model):
    """One row of a version, as stored in its Parquet artifact (row = position there)."""

    TRAIN, VALIDATION, TEST = 0, 1, 2
    SPLIT_CHOICES = [(TRAIN, "train"), (VALIDATION, "validation"), (TEST, "test")]

    # No index of its own: the (version, row) unique constraint serves every lookup by version,
    # and each index costs time on a million-row COPY.
    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="examples", db_index=False)
    row = models.PositiveIntegerField()
    # The row's identity across a version's family: its row number in the upload it descends
    # from (an upload's own rows: `row`). Children keep it through redaction, dedup, new splits
    # and frozen labels, so the diff matches a row to itself even where dedup moved `row`.
    # Null only for rows written before it was kept.
    origin_row = models.PositiveIntegerField(null=True, blank=True)
    text = models.TextField()  # the prompt, for instruction pairs
    response = models.TextField(blank=True)
    label = models.CharField(max_length=200, blank=True)
    split = models.PositiveSmallIntegerField(choices=SPLIT_CHOICES)
    group = models.CharField(max_length=200, blank=True)
    timestamp = models.DateTimeField(null=True, blank=True)
    row_sha256 = models.CharField(max_length=64)
    # First 8 bytes of the normalized text's hash: exact duplicates and diffs match on it.
    content_key = models.BigIntegerField()
    has_pii = models.BooleanField()
    pii_kinds = models.CharField(max_length=200, blank=True)
    duplicate_cluster = models.BigIntegerField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    objects = ExampleQuerySet.as_manager()

    class Meta:
        ordering = ["version", "row"]
        constraints = [models.UniqueConstraint(fields=["version", "row"], name="example_row_unique")]
        indexes = [
            models.Index(fields=["version", "split", "label", "row"], name="example_split_label_idx"),
            models.Index(fields=["version", "label", "row"], name="example_label_idx"),
            # Only the rows with PII (a few percent): the "no PII" filter reads the (version,
            # row) order and skips the few, and the import maintains a far smaller index.
            models.Index(fields=["version", "row"], condition=models.Q(has_pii=True), name="example_pii_rows_idx"),
            # No index on origin_row or content_key: the diff reads each version's row keys
            # (RowKeys), never these columns, and every index costs time on each import.
        ]

    def __str__(self):
        return f"{self.version} row {self.row}"

    @property
    def split_name(self):
        return SPLIT_NAMES[self.split]


class ExampleText(models.Model):
    """Each example's text again, under the full-text (GIN) index of the example browser's
    search, on PostgreSQL only (SQLite searches `Example.text` with LIKE and leaves this empty).

    A table of its own because that index is most of what storing a version costs (16 of
    25 s of PostgreSQL time for a million rows): an upload fills this table on a second
    connection while it is still looking for duplicates, and commits it right after the
    version (see versions.TextIndexWriter). Rows match Example by (version, row).
    """

    pk = models.CompositePrimaryKey("version", "row")
    # No foreign key in the database: PostgreSQL checks a deferred one row by row at commit
    # (about 2.7 s per million rows, measured), and these rows are written only by
    # TextIndexWriter, whose transaction commits after the version's or not at all.
    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="+", db_index=False,
                                db_constraint=False)
    row = models.PositiveIntegerField()
    text = models.TextField()

    def __str__(self):
        return f"{self.version_id} row {self.row} (search text)"


class Upload(models.Model):
    """A file handed to Lifecycle and its ingest: the raw file is kept as an artifact, the
    validation report is kept whether the ingest succeeds or not."""

    class OnError(models.TextChoices):
        REJECT = "reject", "Reject the file if any row is bad"
        DROP = "drop", "Drop bad rows and keep the report with the version"

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="uploads")
    source_sha256 = models.CharField(max_length=64)
    filename = models.CharField(max_length=255)  # shown to people, never used as a path
    size = models.BigIntegerField()
    format = models.CharField(max_length=10)
    columns = models.JSONField(default=list)
    mapping = models.JSONField(default=dict)
    on_error = models.CharField(max_length=10, choices=OnError.choices, default=OnError.REJECT)
    # Train before validation before test by the timestamp column, instead of a seeded shuffle.
    split_by_time = models.BooleanField(default=False)
    job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.PROTECT, related_name="upload")
    version = models.ForeignKey(DatasetVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="uploads")
    report = models.JSONField(default=dict)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"upload {self.pk} of {self.filename} to {self.dataset.slug}"

    def get_absolute_url(self):
        return reverse("datasets:upload", args=[self.pk])

    @property
    def status(self):
        return self.job.status if self.job_id else "mapping"
