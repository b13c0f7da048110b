"""Login throttling on django-axes: failures are counted in the database, so every web
process (and a restarted one) sees the same counts.

Two counters, each with its own limit (docs/deployment.md, "Login throttling"):
one username tried from one address (LOGIN_FAILURE_LIMIT) and one address whatever the
usernames (LOGIN_ADDRESS_FAILURE_LIMIT, higher). Neither counts a username on its own, so
a guesser at another address cannot lock a user out by typing wrong passwords for their name.
"""
import ipaddress

from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.shortcuts import render
from django.utils import timezone

from lifecycle.core.models import AuditEvent


class LoginThrottleBackend(AxesStandaloneBackend):
    """Refuses a locked-out login before the password is checked."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            # No client to throttle: the test client and scripts call authenticate() bare,
            # while every web login (our form, the admin's) passes its request.
            return None
        return super().authenticate(request, username, password, **kwargs)


class LoginThrottleHandler(AxesDatabaseHandler):
    """Axes compares one number with AXES_FAILURE_LIMIT; an address past its own, higher
    limit reports the pair limit, so both counters lock through the same path."""

    def get_failures(self, request, credentials=None):
        pair, address = self.failure_counts(request, credentials)
        if address >= settings.LOGIN_ADDRESS_FAILURE_LIMIT:
            return max(pair, settings.AXES_FAILURE_LIMIT)
        return pair

    def failure_counts(self, request, credentials=None):
        """(failures for this username from this address, failures from this address), in
        the order of AXES_LOCKOUT_PARAMETERS."""
        return tuple(
            attempts.aggregate(n=Sum("failures_since_start"))["n"] or 0
            for attempts in self.get_user_attempts(request, credentials)
        )


def client_address(request):
    """REMOTE_ADDR, or the client address written by the outermost of TRUSTED_PROXY_COUNT
    proxies: entries further left in X-Forwarded-For are whatever the client sent."""
    hops = settings.TRUSTED_PROXY_COUNT
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if hops and len(forwarded) >= hops and _is_address(forwarded[-hops]):
        return forwarded[-hops]
    return request.META.get("REMOTE_ADDR") or None


def _is_address(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def lockout_response(request, original_response=None, credentials=None):
    # The same page whichever counter tripped and whether the username exists, so the
    # answer tells a guesser nothing.
    minutes = settings.LOGIN_COOLOFF_MINUTES
    response = render(request, "registration/locked_out.html", {"minutes": minutes}, status=429)
    if minutes:
        response["Retry-After"] = str(minutes * 60)
    return response


def record_lockout(sender, request, username, ip_address, **kwargs):
    """user_locked_out: one audit event when a lock starts. Axes sends the signal again for
    every attempt refused while locked; those never reached the counting step."""
    if request is None or getattr(request, "axes_failures_since_start", None) is None:
        return
    credentials = getattr(request, "axes_credentials", None)
    pair, address = LoginThrottleHandler().failure_counts(request, credentials)
    payload = {"username": username, "address": ip_address, "failures": pair, "address_failures": address}
    # The actor is unknown: the username was typed by an unauthenticated client.
    with transaction.atomic():
        AuditEvent.record(None, "login.locked", payload=payload, object_type="login", object_id=username or "")


def record_unlock(sender, instance, **kwargs):
    """post_delete of an AccessAttempt still inside the cool-off: an admin (the axes admin
    or an axes_reset* command) cleared counted failures. Expired rows axes prunes itself
    are not an unlock."""
    cooloff = settings.AXES_COOLOFF_TIME
    if cooloff is not None and instance.attempt_time <= timezone.now() - cooloff:
        return
    payload = {"username": instance.username, "address": instance.ip_address, "failures": instance.failures_since_start}
    with transaction.atomic():
        AuditEvent.record(None, "login.unlocked", payload=payload, object_type="login", object_id=instance.username or "")


def connect():
    from axes.models import AccessAttempt
    from axes.signals import user_locked_out
    from django.db.models.signals import post_delete

    user_locked_out.connect(record_lockout, dispatch_uid="lifecycle.core.login_throttle.lockout")
    post_delete.connect(record_unlock, sender=AccessAttempt, dispatch_uid="lifecycle.core.login_throttle.unlock")
