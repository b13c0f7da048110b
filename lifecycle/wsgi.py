import os

from django.core.wsgi import get_wsgi_application

os.umask(0o077)  # files the web process writes are its own user's alone (as in manage.py)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lifecycle.settings")
application = get_wsgi_application()


def _refuse_broken_configuration():
    # gunicorn does not run system checks; a broken configuration should stop the web
    # process at start-up, not surface as errors on the first requests.
    from django.core.checks import run_checks
    from django.core.exceptions import ImproperlyConfigured

    errors = [e for e in run_checks(tags=["lifecycle"]) if e.is_serious()]
    if errors:
        raise ImproperlyConfigured("; ".join(f"{e.id}: {e.msg}" for e in errors))


_refuse_broken_configuration()
