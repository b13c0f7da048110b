from django.urls import NoReverseMatch, reverse

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


def _nav_items():
    items = []
    for label, name in NAVIGATION:
        try:
            items.append((label, reverse(name)))
        except NoReverseMatch:
            continue
    return items


def navigation(request):
    user = getattr(request, "user", None)
    roles = sorted(user_roles(user)) if user is not None else []
    return {"nav_items": _nav_items(), "user_role_names": roles}
