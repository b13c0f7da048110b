"""Where a dataset version's rows came from, beyond its own parents: apps higher up (labeling)
register a source here, so that apps that read lineage (the registry) never import them.

A source is a function `(version) -> dict | None`; a dict says what made the version, with at
least "kind", "name" and "url", and for labeling the QC verdict the freeze was given on.
"""
_sources = []


def source(func):
    """Register `func` as a lineage source (used as a decorator, in the app's ready())."""
    if func not in _sources:
        _sources.append(func)
    return func


def made_by(version):
    """What the registered sources say made `version` (an empty list when nothing did)."""
    return [found for func in _sources if (found := func(version))]


def chain(version, limit=50):
    """The version and its ancestors, nearest first."""
    found = []
    while version is not None and len(found) < limit:
        found.append(version)
        version = version.parent
    return found
