from django.core.management.base import BaseCommand, CommandError

from lifecycle.core.models import AuditEvent


class Command(BaseCommand):
    help = "Walk the audit chain; exit non-zero naming the first broken link."

    def handle(self, *args, **options):
        broken = AuditEvent.verify_chain()
        if broken is not None:
            seq, reason = broken
            raise CommandError(f"audit chain broken at event #{seq}: {reason}")
        count = AuditEvent.objects.count()
        self.stdout.write(f"audit chain intact: {count} events verified")
