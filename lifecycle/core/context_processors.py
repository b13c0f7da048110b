import functools

from django.urls import NoReverseMatch, resolve, reverse

from lifecycle.core.roles import user_roles

# Sections appear in the navigation as soon as their app defines the named URL.
NAVIGATION = (
    ("Datasets", "datasets:list"),
    ("Labeling", "labeling:list"),
    ("Runs", "runs:list"),
    ("Registry", "registry:list"),
    ("Deployments", "deployments:list"),
    ("Monitoring", "monitoring:overview"),
    ("Audit", "audit"),
    ("Jobs", "jobs"),
)


@functools.cache
def _sections():
    """(label, url, roles) per routed section. The roles are read from the view the item links
    to (its @role_required), so the menu can never offer a page that answers 403; None means
    any logged-in user."""
    sections = []
    for label, name in NAVIGATION:
        try:
            url = reverse(name)
        except NoReverseMatch:
            continue
        sections.append((label, url, getattr(resolve(url).func, "lifecycle_roles", None)))
    return tuple(sections)


def nav_items(user):
    """The sections `user` may open, as (label, url)."""
    roles = user_roles(user)
    return [(label, url) for label, url, needed in _sections() if needed is None or roles & set(needed)]


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_items": [], "user_role_names": []}
    return {"nav_items": nav_items(user), "user_role_names": sorted(user_roles(user))}
