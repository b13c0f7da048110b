import os
import secrets

from django.contrib.auth.models import Group, Permission, User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from lifecycle.core.models import AuditEvent
from lifecycle.core.roles import ROLE_PERMISSIONS, ROLES


class Command(BaseCommand):
    help = "Create the role groups and their permissions (idempotent), and optionally a first admin."

    def add_arguments(self, parser):
        parser.add_argument("--admin", metavar="USERNAME", help="create this superuser if it does not exist")
        parser.add_argument("--email", default="", help="the admin's e-mail address")

    def handle(self, *args, admin=None, email="", **options):
        with transaction.atomic():
            for role in ROLES:
                self.ensure_group(role)
            if admin:
                self.ensure_admin(admin, email)

    def ensure_group(self, role):
        group, created = Group.objects.get_or_create(name=role)
        wanted = set(self.role_permissions(role))
        current = set(group.permissions.all())
        if wanted != current:
            group.permissions.set(wanted)
        if created or wanted != current:
            AuditEvent.record(None, "role.configured", group, {"role": role, "permissions": sorted(p.codename for p in wanted)})
        self.stdout.write(f"role {role}: {'created' if created else 'present'}, {len(wanted)} permissions")

    @staticmethod
    def role_permissions(role):
        for app_label, actions in ROLE_PERMISSIONS[role].items():
            for action in actions:
                yield from Permission.objects.filter(content_type__app_label=app_label, codename__startswith=f"{action}_")

    def ensure_admin(self, username, email):
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"admin {username}: present (password unchanged)")
            return
        password = os.environ.get("LIFECYCLE_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        if len(password) < 8:
            raise CommandError("LIFECYCLE_ADMIN_PASSWORD must be at least 8 characters")
        user = User.objects.create_superuser(username=username, email=email, password=password)
        AuditEvent.record(None, "user.created", user, {"username": username, "superuser": True})
        shown = "from LIFECYCLE_ADMIN_PASSWORD" if "LIFECYCLE_ADMIN_PASSWORD" in os.environ else password
        # Printed once to the operator's terminal, never logged.
        self.stdout.write(f"admin {username}: created, password: {shown}")
