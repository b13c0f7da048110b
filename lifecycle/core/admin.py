from django.contrib import admin

from lifecycle.core.models import ApiToken, AuditEvent, Job


class ReadOnlyAdmin(admin.ModelAdmin):
    """For rows that change only through model methods that write the audit trail (or never
    change at all): the admin shows them and nothing more."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):  # the trail is append-only everywhere, the admin included
    list_display = ("seq", "created_at", "actor", "action", "object_type", "object_id")
    list_filter = ("action",)
    search_fields = ("actor", "object_id")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "task", "queue", "status", "created_at", "heartbeat_at")
    list_filter = ("status", "queue")
    readonly_fields = [f.name for f in Job._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")
