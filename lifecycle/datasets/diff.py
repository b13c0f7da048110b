"""What changed between two versions: rows edited, added and removed, one page of each, and
how the label distribution moved.

Rows are matched by identity where the two versions descend from the same upload: each
example keeps `origin_row`, its row number in that upload, through redaction, dedup, new
splits and frozen labels. Same identity and another row hash (or split) is an edit; an
identity on one side only is a row added or removed. Two different uploads share no identity:
there a row is matched by its content key (the normalized text's hash) and its occurrence
among rows with that key, so the same text with another label is an edit, and a text held
twice where it was held once is one row added.

All of it is one query: the join of the two versions' (identity, hash) columns, the counts
by window functions over the changed rows, and only the requested page of each kind comes
back. Then the rows of those pages are read by (version, row), and their texts compared.
"""
import difflib
import re
from dataclasses import dataclass, field

from django.db import connection
from django.utils.html import escape
from django.utils.safestring import mark_safe

from lifecycle.datasets.models import SPLIT_NAMES, Example

PAGE_SIZE = 50
MAX_PAGE = 1_000_000  # 50 million changed rows: past any version a page can be asked for
EDITED, ADDED, REMOVED = "edited", "added", "removed"
KINDS = (EDITED, ADDED, REMOVED)
BY_IDENTITY, BY_CONTENT = "identity", "content"
FIELDS = ("version", "row", "text", "response", "label", "split", "group", "timestamp", "metadata", "row_sha256")
_WORDS = re.compile(r"(\s+)")


@dataclass
class Page:
    kind: str
    number: int
    total: int = 0
    rows: list = field(default_factory=list)

    @property
    def has_previous(self):
        return self.number > 1

    @property
    def has_next(self):
        return self.number * PAGE_SIZE < self.total

    @property
    def first(self):
        return (self.number - 1) * PAGE_SIZE + 1


@dataclass
class Edit:
    old: Example
    new: Example

    @property
    def text(self):
        return highlight(self.old.text, self.new.text)

    @property
    def response(self):
        return highlight(self.old.response, self.new.response) if self.old.response != self.new.response else None

    @property
    def label_changed(self):
        return self.old.label != self.new.label

    @property
    def split_changed(self):
        return self.old.split != self.new.split

    @property
    def other_changes(self):
        """Changed fields the page has no column for."""
        return [name for name in ("group", "timestamp", "metadata") if getattr(self.old, name) != getattr(self.new, name)]


def match_by(old, new):
    origin_old, origin_new = old.origin(), new.origin()
    return BY_IDENTITY if origin_old is not None and origin_new is not None and origin_old.pk == origin_new.pk else BY_CONTENT


def _side(how):
    table = Example._meta.db_table
    if how == BY_IDENTITY:
        key = "origin_row AS k1, 0 AS k2, split"
    else:
        # Each upload is split afresh: between two of them a row's split says nothing.
        key = 'content_key AS k1, ROW_NUMBER() OVER (PARTITION BY content_key ORDER BY "row") AS k2, 0 AS split'
    return f'SELECT {key}, "row", row_sha256 AS h FROM {table} WHERE version_id = %s'


# PostgreSQL: one hash full join, each version's rows read once.
FULL = """
    SELECT CASE WHEN o."row" IS NULL THEN 1 WHEN n."row" IS NULL THEN 2 ELSE 0 END AS kind,
           coalesce(o."row", n."row") AS pos, o."row" AS old_row, n."row" AS new_row
    FROM o FULL JOIN n ON n.k1 = o.k1 AND n.k2 = o.k2
    WHERE o."row" IS NULL OR n."row" IS NULL OR n.h <> o.h OR n.split <> o.split
"""
# SQLite: a left join and an anti-join (no FULL JOIN before 3.39), each an index lookup.
JOINED = """
    SELECT CASE WHEN n."row" IS NULL THEN 2 ELSE 0 END AS kind, o."row" AS pos, o."row" AS old_row, n."row" AS new_row
    FROM o LEFT JOIN n ON n.k1 = o.k1 AND n.k2 = o.k2
    WHERE n."row" IS NULL OR n.h <> o.h OR n.split <> o.split
    UNION ALL
    SELECT 1, n."row", NULL, n."row" FROM n LEFT JOIN o ON o.k1 = n.k1 AND o.k2 = n.k2 WHERE o."row" IS NULL
"""
# SQLite builds a (transient, automatic) index on a stored side only for a subquery's lookup,
# never for a join of two stored sides: there it scans one side per row of the other (6 s at
# 3,000 rows). So by content, on SQLite, each old row looks its match up.
LOOKED_UP = """
    SELECT CASE WHEN new_row IS NULL THEN 2 ELSE 0 END AS kind, old_row AS pos, old_row, new_row FROM (
        SELECT o."row" AS old_row, (SELECT n."row" FROM n WHERE n.k1 = o.k1 AND n.k2 = o.k2) AS new_row,
               EXISTS (SELECT 1 FROM n WHERE n.k1 = o.k1 AND n.k2 = o.k2 AND n.h = o.h AND n.split = o.split) AS same
        FROM o
    ) AS looked_up WHERE NOT same
    UNION ALL
    SELECT 1, n."row", NULL, n."row" FROM n WHERE NOT EXISTS (SELECT 1 FROM o WHERE o.k1 = n.k1 AND o.k2 = n.k2)
"""


def _query(how):
    """Kind (0 edited, 1 added, 2 removed), its total, and the rows on each kind's page.

    By identity each side stays inline (NOT MATERIALIZED), so SQLite reads the (version,
    origin_row) index and PostgreSQL hashes. By content SQLite stores each side once: inline
    it would rerun the window function for every row of the other side. Row 1 of every kind
    comes back too, so that a kind's total is known when its page is past the end.
    """
    sqlite_by_content = how == BY_CONTENT and connection.vendor == "sqlite"
    stored = "MATERIALIZED" if sqlite_by_content else "NOT MATERIALIZED"
    changed = FULL if connection.vendor == "postgresql" else LOOKED_UP if sqlite_by_content else JOINED
    side = _side(how)
    return f"""
        WITH o AS {stored} ({side}), n AS {stored} ({side})
        SELECT kind, total, rn, old_row, new_row FROM (
            SELECT kind, old_row, new_row, COUNT(*) OVER (PARTITION BY kind) AS total,
                   ROW_NUMBER() OVER (PARTITION BY kind ORDER BY pos) AS rn
            FROM ({changed}) AS changed
        ) AS ranked
        WHERE rn = 1 OR (kind = 0 AND rn BETWEEN %s AND %s) OR (kind = 1 AND rn BETWEEN %s AND %s)
              OR (kind = 2 AND rn BETWEEN %s AND %s)
    """


def _bounds(page):
    return [(page - 1) * PAGE_SIZE + 1, page * PAGE_SIZE]


def changed_rows(old, new, how, pages):
    """{kind: Page} with each page's (old row, new row) pairs, in row order."""
    result = {kind: Page(kind, pages.get(kind, 1)) for kind in KINDS}
    params = [old.pk, new.pk] + [b for kind in KINDS for b in _bounds(result[kind].number)]
    with connection.cursor() as cursor:
        cursor.execute(_query(how), params)
        found = cursor.fetchall()
    for kind_id, total, rank, old_row, new_row in sorted(found, key=lambda r: (r[0], r[2])):
        page = result[KINDS[kind_id]]
        page.total = total
        if page.first <= rank < page.first + PAGE_SIZE:
            page.rows.append((old_row, new_row))
    return result


def _examples(version, rows):
    wanted = [row for row in rows if row is not None]
    return {e.row: e for e in version.examples.filter(row__in=wanted).only(*FIELDS)} if wanted else {}


def _fill(pages, old, new):
    """Replace each page's row numbers by the examples themselves (two queries)."""
    olds = _examples(old, [o for page in pages.values() for o, _ in page.rows])
    news = _examples(new, [n for page in pages.values() for _, n in page.rows])
    pages[EDITED].rows = [Edit(olds[o], news[n]) for o, n in pages[EDITED].rows]
    pages[ADDED].rows = [news[n] for _, n in pages[ADDED].rows]
    pages[REMOVED].rows = [olds[o] for o, _ in pages[REMOVED].rows]


def highlight(old, new):
    """The two texts as HTML, the words only in `old` in <del>, only in `new` in <ins>; every
    piece of text is escaped before it is wrapped."""
    a, b = _WORDS.split(old or ""), _WORDS.split(new or "")
    before, after = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        left, right = escape("".join(a[i1:i2])), escape("".join(b[j1:j2]))
        if op == "equal":
            before.append(left)
            after.append(right)
            continue
        if left:
            before.append(f"<del>{left}</del>")
        if right:
            after.append(f"<ins>{right}</ins>")
    return mark_safe("".join(before)), mark_safe("".join(after))


def _label_totals(version):
    totals = {}
    for labels in version.split_counts().values():
        for label, count in labels.items():
            totals[label] = totals.get(label, 0) + count
    return totals


def label_changes(old, new):
    old_totals, new_totals = _label_totals(old), _label_totals(new)
    labels = sorted(set(old_totals) | set(new_totals))
    return {
        "labels": labels,
        "old_counts": [old_totals.get(label, 0) for label in labels],
        "new_counts": [new_totals.get(label, 0) for label in labels],
        "label_changes": [(label, old_totals.get(label, 0), new_totals.get(label, 0),
                           new_totals.get(label, 0) - old_totals.get(label, 0)) for label in labels],
    }


def compare(old, new, pages=None):
    """The diff of `old` → `new`: how rows were matched, a Page of each kind (page numbers
    from `pages`, {kind: number}, default 1), and the label distributions."""
    how = match_by(old, new)
    found = changed_rows(old, new, how, pages or {})
    _fill(found, old, new)
    return {"match_by": how, "pages": found, **{f"{kind}_count": found[kind].total for kind in KINDS},
            "split_names": SPLIT_NAMES, **label_changes(old, new)}
