#!/usr/bin/env python
"""Django's command-line utility for Lifecycle."""
import os
import sys


def main():
    if sys.argv[1:2] != ["collectstatic"]:
        # What Lifecycle writes (the SQLite file with sessions and password hashes, artifacts,
        # logs) is its own user's alone. Static files are public, and an image build collects
        # them as root for the app user to read.
        os.umask(0o077)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lifecycle.settings")
    from django.core.exceptions import ImproperlyConfigured

    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # One clear line instead of a traceback: a configuration error is the
        # operator's to fix, not a bug to debug.
        sys.stderr.write(f"Lifecycle configuration error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
