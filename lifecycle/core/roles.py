"""The five roles of Lifecycle, as Django groups, and the checks views use.

A role is a group name. Superusers pass every role check. Permissions granted to each
group (by `manage.py bootstrap`) keep the Django admin consistent with the role checks.
"""
from functools import wraps

from django.http import JsonResponse
from django.shortcuts import render

LABELER = "labeler"
ML_ENGINEER = "ml_engineer"
APPROVER = "approver"
ONCALL = "oncall"
VIEWER = "viewer"
ROLES = (LABELER, ML_ENGINEER, APPROVER, ONCALL, VIEWER)
# Who reads the audit trail; who reads datasets, runs and their statistics. The pages and the
# jobs working on their objects (core/jobs.py task roles) use the same tuples.
AUDIT_ROLES = (APPROVER, ML_ENGINEER, ONCALL)
READ_ROLES = (ML_ENGINEER, APPROVER, VIEWER)

ROLE_DESCRIPTIONS = {
    LABELER: "reviews and labels examples",
    ML_ENGINEER: "uploads data, launches runs, registers and deploys models",
    APPROVER: "approves promotions and signs off on audited exceptions",
    ONCALL: "watches production and rolls back",
    VIEWER: "reads dashboards and statistics",
}

# Model permissions each role gets in the admin, by app label and action.
ROLE_PERMISSIONS = {
    LABELER: {"datasets": ("view",)},
    ML_ENGINEER: {app: ("view", "add", "change") for app in ("datasets", "runs", "labeling", "registry", "deployments")},
    APPROVER: {app: ("view",) for app in ("core", "datasets", "runs", "labeling", "registry", "deployments")},
    ONCALL: {app: ("view",) for app in ("deployments", "monitoring")},
    VIEWER: {app: ("view",) for app in ("datasets", "runs", "labeling", "registry", "deployments", "monitoring")},
}


def user_roles(user):
    """The user's role names, read once per request object and cached on it."""
    if not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_lifecycle_roles", None)
    if cached is None:
        names = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        cached = frozenset(ROLES) if user.is_superuser else frozenset(names)
        user._lifecycle_roles = cached
    return cached


def has_role(user, *roles):
    return bool(user_roles(user) & set(roles))


def forbidden(request, roles):
    needed = ", ".join(roles)
    message = f"This needs one of these roles: {needed}."
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "forbidden", "detail": message}, status=403)
    return render(request, "403.html", {"message": message, "roles": roles}, status=403)


def role_required(*roles):
    """Let the request through only for users holding one of `roles` (or superusers).

    The decorated view carries `lifecycle_roles`, which the access test reads to know
    which URLs a viewer must be refused.
    """

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not has_role(request.user, *roles):
                return forbidden(request, roles)
            return view(request, *args, **kwargs)

        wrapper.lifecycle_roles = tuple(roles)
        return wrapper

    return decorator
