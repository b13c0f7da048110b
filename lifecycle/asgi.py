import os

from django.core.asgi import get_asgi_application

os.umask(0o077)  # files the web process writes are its own user's alone (as in manage.py)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lifecycle.settings")
application = get_asgi_application()
