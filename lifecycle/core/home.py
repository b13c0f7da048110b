"""The start page's panels: per role, what to do now.

Each app that has something to say keeps its panels in its own `home.py` and registers them
with `@panel`; core imports those modules by name (autodiscover), never the apps themselves,
so the dependencies keep pointing one way. A panel is a function of the request that returns
a `Panel` (or None when it has nothing to show); it runs only for users holding one of its roles.
"""
import dataclasses
import functools

from django.utils.module_loading import autodiscover_modules

from lifecycle.core.context_processors import nav_items
from lifecycle.core.roles import ONCALL, VIEWER, user_roles

_registry = []


@dataclasses.dataclass
class Panel:
    title: str
    note: str = ""
    rows: list = dataclasses.field(default_factory=list)  # (text, url or "", detail)
    empty: str = ""  # shown instead of the rows when there are none
    links: list = dataclasses.field(default_factory=list)  # (text, url)
    id: str = ""


def panel(*roles, order=50):
    """Register the decorated function as a start-page panel for `roles`; lower orders first."""

    def register(func):
        _registry.append((order, func.__module__, func.__name__, tuple(roles), func))
        return func

    return register


@functools.cache
def _discover():
    autodiscover_modules("home")
    return sorted(_registry, key=lambda entry: entry[:3])


def panels_for(request):
    roles = user_roles(request.user)
    shown = []
    for *_, needed, func in _discover():
        if roles & set(needed):
            result = func(request)
            if result is not None:
                shown.append(result)
    return shown


@panel(VIEWER, order=90)
def readable(request):
    return Panel("What you may read", rows=[(label, url, "") for label, url in nav_items(request.user)],
                 id="home-readable")
