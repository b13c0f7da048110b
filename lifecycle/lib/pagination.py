"""Keyset pagination: pages cost the same at row 10 and row 10,000,000.

Offset pagination (and the COUNT(*) a numbered paginator needs) grows with the table;
walking an indexed, unique, descending key does not.
"""
from dataclasses import dataclass


@dataclass
class KeysetPage:
    items: list
    newer: object  # key to pass as ?after= for the previous (newer) page, or None
    older: object  # key to pass as ?before= for the next (older) page, or None


def keyset_page(queryset, key, *, before=None, after=None, size=50):
    """One page of `queryset` ordered by `key` descending, starting below `before` or above `after`."""
    if after is not None:
        rows = list(queryset.filter(**{f"{key}__gt": after}).order_by(key)[: size + 1])
        has_more_newer = len(rows) > size
        rows = rows[:size][::-1]
        newer = getattr(rows[0], key) if rows and has_more_newer else None
        older = getattr(rows[-1], key) if rows else None
        return KeysetPage(rows, newer, older)
    qs = queryset.order_by(f"-{key}")
    if before is not None:
        qs = qs.filter(**{f"{key}__lt": before})
    rows = list(qs[: size + 1])
    has_more_older = len(rows) > size
    rows = rows[:size]
    older = getattr(rows[-1], key) if rows and has_more_older else None
    newer = getattr(rows[0], key) if rows and before is not None else None
    return KeysetPage(rows, newer, older)
