from django.apps import apps
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth import admin as auth_admin  # registers User and Group; replaced below
from django.contrib.auth.models import Group, User
from django.core import checks
from django.core.exceptions import FieldDoesNotExist
from django.db import transaction

from lifecycle.core.models import ApiToken, AuditEvent, Job, canonical_json


class ReadOnlyAdmin(admin.ModelAdmin):
    """For rows that change only through model methods that write the audit trail (or never
    change at all): the admin shows them and nothing more."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- Audited admins: every add, change and delete writes one AuditEvent in its transaction.


def _plain(value):
    """The value as stored in the event: JSON as is, anything else by its str()."""
    try:
        canonical_json(value)
    except TypeError:
        return str(value)
    return value


def _related_diff(old, new):
    old_names, new_names = {o.pk: str(o) for o in old}, {o.pk: str(o) for o in new}
    return {
        "added": sorted(name for pk, name in new_names.items() if pk not in old_names),
        "removed": sorted(name for pk, name in old_names.items() if pk not in new_names),
    }


def form_changes(form, secret_fields):
    """What the saved form changed: old → new per model field, added/removed names per
    many-to-many. Secret fields and fields the model does not have (a password typed twice)
    are named in `not_shown`, never valued."""
    changes, not_shown = {}, []
    for name in form.changed_data:
        try:
            field = form.instance._meta.get_field(name)
        except FieldDoesNotExist:
            field = None
        if field is None or name in secret_fields:
            not_shown.append(name)
        elif field.many_to_many:
            changes[name] = _related_diff(form.initial.get(name) or [], field.value_from_object(form.instance))
        else:
            changes[name] = {"old": _plain(form.initial.get(name)), "new": _plain(field.value_from_object(form.instance))}
    return changes, sorted(not_shown)


class AuditedAdmin(admin.ModelAdmin):
    """For models people may edit in the admin. The admin's own add, change and delete views
    (and list_editable) save inside transaction.atomic, which AuditEvent.record requires, so
    the event commits or rolls back with the change; the bulk delete action does not, so it
    gets its own transaction here. Use it first in the bases: `class X(AuditedAdmin, UserAdmin)`."""

    audit_secret_fields = ("password",)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        changes, not_shown = form_changes(form, self.audit_secret_fields)
        if change and not changes and not not_shown:
            return  # "Save" on an unchanged form changes nothing
        payload = {"object": self.audit_name(form.instance), "changes": changes, "not_shown": not_shown}
        AuditEvent.record(request.user, "admin.changed" if change else "admin.added", form.instance, payload)

    def delete_model(self, request, obj):
        AuditEvent.record(request.user, "admin.deleted", obj, {"object": self.audit_name(obj)})
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                AuditEvent.record(request.user, "admin.deleted", obj, {"object": self.audit_name(obj)})
            super().delete_queryset(request, queryset)

    def audit_name(self, obj):
        """How the event names the row, which may be gone by the time someone reads it."""
        return str(obj)

    def check(self, **kwargs):
        errors = super().check(**kwargs)
        if self.inlines:
            # form_changes reads the parent form only: an inline-only edit would go unrecorded.
            errors.append(checks.Error("AuditedAdmin does not audit inline formsets", obj=type(self), id="lifecycle.E101"))
        return errors


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class AuditedUserAdmin(AuditedAdmin, auth_admin.UserAdmin):
    def user_change_password(self, request, id, form_url=""):
        if request.method != "POST":
            return super().user_change_password(request, id, form_url)
        # Django's password view saves outside any transaction; the event needs one. A new
        # hash (a new salt, even for the same password) is the sign that it was saved.
        with transaction.atomic():
            before = self.get_object(request, unquote(id))
            response = super().user_change_password(request, id, form_url)
            after = self.get_object(request, unquote(id))
            if before is not None and after is not None and after.password != before.password:
                payload = {"object": self.audit_name(after), "usable_password": after.has_usable_password()}
                AuditEvent.record(request.user, "admin.password_changed", after, payload)
        return response


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdmin, auth_admin.GroupAdmin):
    pass


# --- Core rows with a state machine or a security meaning: shown, changed only by their methods.


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):  # the trail is append-only everywhere, the admin included
    list_display = ("seq", "created_at", "actor", "action", "object_type", "object_id")
    list_filter = ("action",)
    search_fields = ("actor", "object_id")


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):  # transitions are conditional updates in Job's methods
    list_display = ("id", "task", "queue", "status", "created_at", "heartbeat_at")
    list_filter = ("status", "queue")


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_select_related = ("user",)
    actions = ["revoke_selected"]

    @admin.action(permissions=["revoke"], description="Revoke selected tokens")
    def revoke_selected(self, request, queryset):
        revoked = sum(token.revoke(request.user) for token in queryset)
        self.message_user(request, f"Revoked {revoked} token(s); the others were already revoked.")

    def has_revoke_permission(self, request):
        return request.user.has_perm("core.change_apitoken")


# --- django-axes (login throttling), where installed, registers its own admins. Deleting an
# attempt unlocks a login, so deletions are audited; the logs are history and read-only.

if apps.is_installed("axes"):
    from axes import admin as axes_admin
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    class AccessAttemptAdmin(AuditedAdmin, axes_admin.AccessAttemptAdmin):
        actions = ()  # its "clean up expired" action deletes unaudited; axes expires them itself

        def audit_name(self, obj):
            return f"{obj.username} from {obj.ip_address}"

    class AccessLogAdmin(ReadOnlyAdmin, axes_admin.AccessLogAdmin):
        pass

    class AccessFailureLogAdmin(ReadOnlyAdmin, axes_admin.AccessFailureLogAdmin):
        pass

    for model, model_admin in [(AccessAttempt, AccessAttemptAdmin), (AccessLog, AccessLogAdmin), (AccessFailureLog, AccessFailureLogAdmin)]:
        if admin.site.is_registered(model):  # not when AXES_ENABLE_ADMIN is off
            admin.site.unregister(model)
            admin.site.register(model, model_admin)
