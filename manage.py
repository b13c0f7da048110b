#!/usr/bin/env python
"""Django's command-line utility for Lifecycle."""
import os
import sys


def main():
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
