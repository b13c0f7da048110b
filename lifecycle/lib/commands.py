"""Small helpers shared by management commands."""
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError


def user_named(username):
    """The user called `username`, None for an empty name; CommandError for a stranger."""
    if not username:
        return None
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"no user {username!r}")
    return user
