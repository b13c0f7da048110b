"""The Django admin and the audit trail: every edit it allows writes an AuditEvent in the
edit's transaction; rows with a state machine or a security meaning are read-only there."""
import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group, Permission, User
from django.db import DatabaseError, connection
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from lifecycle.core.admin import AuditedAdmin
from lifecycle.core.models import ApiToken, AuditEvent, Job, canonical_json
from tests.conftest import client_for, make_user

NEW_PASSWORD = "a-fresh-passphrase-for-erin-42"

# Every model the admin lets people edit, each with its tests below. A newly registered
# editable admin fails the walk until it is audited and tested here.
AUDITED_AND_TESTED = {"auth.user", "auth.group", "axes.accessattempt"}


def superuser_request(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def is_read_only(model_admin, request):
    return not (
        model_admin.has_add_permission(request)
        or model_admin.has_change_permission(request)
        or model_admin.has_delete_permission(request)
    )


def admin_events(action=None):
    events = AuditEvent.objects.filter(action__startswith="admin.").order_by("seq")
    return list(events.filter(action=action) if action else events)


def user_change_data(user, **fields):
    """The admin's user change form as the browser posts it, unchanged unless told."""
    joined = timezone.localtime(user.date_joined)
    data = {
        "username": user.username, "first_name": user.first_name, "last_name": user.last_name,
        "email": user.email, "last_login_0": "", "last_login_1": "", "groups": [g.pk for g in user.groups.all()],
    }
    # date_joined has a callable default, so the page also carries its initial value.
    for prefix in ("", "initial-"):
        data[f"{prefix}date_joined_0"] = joined.strftime("%Y-%m-%d")
        data[f"{prefix}date_joined_1"] = joined.strftime("%H:%M:%S")
    for flag in ("is_active", "is_staff", "is_superuser"):
        if getattr(user, flag):
            data[flag] = "on"
    data.update(fields)
    return data


@pytest.fixture
def admin_client(client, admin_user):
    return client_for(client, admin_user)


# --- The walk: every registered model admin is read-only or audited.


@pytest.mark.django_db
def test_every_registered_admin_is_read_only_or_audited(admin_user):
    request = superuser_request(admin_user)
    audited = set()
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        if isinstance(model_admin, AuditedAdmin):
            audited.add(label)
        else:
            assert is_read_only(model_admin, request), f"{label}: make its admin a ReadOnlyAdmin or an AuditedAdmin"
    assert {"auth.user", "auth.group"} <= audited
    assert audited <= AUDITED_AND_TESTED, f"{audited - AUDITED_AND_TESTED}: audited, but untested in this file"


@pytest.mark.django_db
@pytest.mark.parametrize("model", list(admin.site._registry), ids=lambda m: m._meta.label_lower)
def test_every_admin_list_renders(admin_client, model):
    opts = model._meta
    assert admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")).status_code == 200


def test_audited_admin_refuses_inlines():
    class MemberInline(admin.TabularInline):
        model = User.groups.through

    class GroupWithMembersAdmin(AuditedAdmin):
        inlines = [MemberInline]

    errors = GroupWithMembersAdmin(Group, admin.AdminSite()).check()
    assert [error.id for error in errors] == ["lifecycle.E101"]


# --- Users: roles are groups, so a membership change is a role change.


@pytest.mark.django_db
def test_adding_a_user_to_a_group_writes_one_event_naming_it(admin_client, admin_user, groups):
    erin = make_user("erin")
    engineer = Group.objects.get(name="ml_engineer")
    response = admin_client.post(f"/admin/auth/user/{erin.pk}/change/", user_change_data(erin, groups=[engineer.pk]))
    assert response.status_code == 302
    assert list(erin.groups.values_list("name", flat=True)) == ["ml_engineer"]
    [event] = admin_events()
    assert (event.action, event.actor, event.object_type, event.object_id) == ("admin.changed", "ada-admin", "auth.user", str(erin.pk))
    assert event.payload["changes"] == {"groups": {"added": ["ml_engineer"], "removed": []}}
    assert AuditEvent.verify_chain() is None


@pytest.mark.django_db
def test_removing_a_role_and_granting_staff_record_old_and_new(admin_client, groups):
    erin = make_user("erin", "ml_engineer", "viewer")
    viewer = Group.objects.get(name="viewer")
    data = user_change_data(erin, groups=[viewer.pk], is_staff="on", email="erin@example.com")
    assert admin_client.post(f"/admin/auth/user/{erin.pk}/change/", data).status_code == 302
    [event] = admin_events()
    assert event.payload["changes"] == {
        "groups": {"added": [], "removed": ["ml_engineer"]},
        "is_staff": {"old": False, "new": True},
        "email": {"old": "", "new": "erin@example.com"},
    }


@pytest.mark.django_db
def test_saving_an_unchanged_user_writes_nothing(admin_client):
    erin = make_user("erin", "viewer")
    assert admin_client.post(f"/admin/auth/user/{erin.pk}/change/", user_change_data(erin)).status_code == 302
    assert admin_events() == []


@pytest.mark.django_db
def test_adding_a_user_records_it_without_the_password(admin_client):
    data = {"username": "newbie", "usable_password": "true", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    assert admin_client.post("/admin/auth/user/add/", data).status_code == 302
    newbie = User.objects.get(username="newbie")
    [event] = admin_events()
    assert (event.action, event.object_id) == ("admin.added", str(newbie.pk))
    assert event.payload["changes"]["username"] == {"old": None, "new": "newbie"}
    assert {"password1", "password2"} <= set(event.payload["not_shown"])
    stored = canonical_json(event.canonical_fields())
    assert NEW_PASSWORD not in stored and newbie.password not in stored


@pytest.mark.django_db(transaction=True)
def test_password_change_is_audited_in_its_transaction_without_the_secret(client):
    # Transactional: no test-wide transaction, so AuditEvent.record's guard sees whether the
    # admin's password view (which Django runs outside any transaction) now has one.
    admin_client = client_for(client, make_user("ada-admin", superuser=True))
    erin = make_user("erin", "viewer")
    old_hash = erin.password
    data = {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"}
    assert admin_client.post(f"/admin/auth/user/{erin.pk}/password/", data).status_code == 302
    erin.refresh_from_db()
    assert erin.check_password(NEW_PASSWORD)
    [event] = admin_events()
    assert (event.action, event.actor, event.object_id) == ("admin.password_changed", "ada-admin", str(erin.pk))
    assert event.payload == {"object": "erin", "usable_password": True}
    stored = canonical_json(event.canonical_fields())
    assert NEW_PASSWORD not in stored and erin.password not in stored and old_hash not in stored


@pytest.mark.django_db
def test_a_refused_password_change_writes_nothing(admin_client):
    erin = make_user("erin", "viewer")
    data = {"password1": NEW_PASSWORD, "password2": "something-else", "usable_password": "true"}
    assert admin_client.post(f"/admin/auth/user/{erin.pk}/password/", data).status_code == 200
    assert admin_events() == []


@pytest.mark.django_db
def test_deleting_a_user_is_audited(admin_client):
    erin = make_user("erin", "viewer")
    assert admin_client.post(f"/admin/auth/user/{erin.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not User.objects.filter(pk=erin.pk).exists()
    [event] = admin_events()
    assert (event.action, event.object_id, event.payload) == ("admin.deleted", str(erin.pk), {"object": "erin"})


@pytest.mark.django_db(transaction=True)
def test_bulk_delete_action_is_audited_in_one_transaction(client):
    # Django's delete action runs outside any transaction: the guard in record() would refuse.
    admin_client = client_for(client, make_user("ada-admin", superuser=True))
    users = [make_user("erin"), make_user("lee")]
    data = {"action": "delete_selected", "_selected_action": [u.pk for u in users], "post": "yes"}
    assert admin_client.post("/admin/auth/user/", data).status_code == 302
    assert not User.objects.filter(username__in=["erin", "lee"]).exists()
    assert sorted(e.payload["object"] for e in admin_events("admin.deleted")) == ["erin", "lee"]


@pytest.fixture
def admin_log_refused(transactional_db):
    """The admin's own log insert, which comes after our event, fails: the whole edit must go."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_admin_log() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'admin log refused'; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_admin_log BEFORE INSERT ON django_admin_log "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_admin_log()"
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_refuse_admin_log ON django_admin_log")
        cursor.execute("DROP FUNCTION test_refuse_admin_log()")


@pytest.mark.django_db(transaction=True)
def test_a_failed_edit_rolls_back_the_change_and_its_event_together(client, admin_log_refused):
    admin_client = client_for(client, make_user("ada-admin", superuser=True))
    erin = make_user("erin")
    engineer = Group.objects.create(name="ml_engineer")
    with pytest.raises(DatabaseError, match="admin log refused"):
        admin_client.post(f"/admin/auth/user/{erin.pk}/change/", user_change_data(erin, groups=[engineer.pk]))
    assert not erin.groups.exists()
    assert admin_events() == []


# --- Groups.


@pytest.mark.django_db
def test_group_add_rename_and_delete_are_audited(admin_client):
    perm = Permission.objects.get(codename="view_dataset")
    assert admin_client.post("/admin/auth/group/add/", {"name": "reviewers", "permissions": [perm.pk]}).status_code == 302
    group = Group.objects.get(name="reviewers")
    data = {"name": "senior-reviewers", "permissions": [perm.pk]}
    assert admin_client.post(f"/admin/auth/group/{group.pk}/change/", data).status_code == 302
    assert admin_client.post(f"/admin/auth/group/{group.pk}/delete/", {"post": "yes"}).status_code == 302
    added, renamed, deleted = admin_events()
    assert added.action == "admin.added" and added.payload["changes"]["permissions"] == {"added": [str(perm)], "removed": []}
    assert renamed.payload["changes"] == {"name": {"old": "reviewers", "new": "senior-reviewers"}}
    assert (deleted.action, deleted.object_id, deleted.payload) == ("admin.deleted", str(group.pk), {"object": "senior-reviewers"})


# --- Login throttling: deleting an access attempt unlocks a login.


@pytest.mark.django_db
@pytest.mark.skipif(not apps.is_installed("axes"), reason="login throttling (django-axes) is not installed")
def test_unlocking_a_login_through_the_admin_is_audited(admin_client):
    from axes.models import AccessAttempt

    attempt = AccessAttempt.objects.create(
        user_agent="curl", ip_address="10.0.0.7", username="erin", http_accept="*/*",
        path_info="/login/", get_data="", post_data="", failures_since_start=10,
    )
    assert admin_client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not AccessAttempt.objects.filter(pk=attempt.pk).exists()
    [event] = admin_events()
    assert (event.action, event.actor, event.object_type) == ("admin.deleted", "ada-admin", "axes.accessattempt")
    assert event.payload == {"object": "erin from 10.0.0.7"}


# --- Read-only rows: tokens and jobs change only through their methods.


def api_status(key):
    return Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {key}").status_code


@pytest.mark.django_db
def test_token_admin_cannot_unrevoke_or_reassign(admin_client, admin_user):
    owner = make_user("erin", "ml_engineer")
    token, key = ApiToken.issue(owner, "cli")
    token.revoke(owner)
    page = admin_client.get(f"/admin/core/apitoken/{token.pk}/change/")
    assert page.status_code == 200 and b'name="revoked_at_0"' not in page.content
    data = {"name": "cli", "user": admin_user.pk, "revoked_at_0": "", "revoked_at_1": ""}
    assert admin_client.post(f"/admin/core/apitoken/{token.pk}/change/", data).status_code == 403
    assert admin_client.post(f"/admin/core/apitoken/{token.pk}/delete/", {"post": "yes"}).status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is not None and token.user == owner
    assert api_status(key) == 401


@pytest.mark.django_db
def test_revoke_action_revokes_through_the_model_and_audits(admin_client):
    owner = make_user("erin", "ml_engineer")
    token, key = ApiToken.issue(owner, "cli")
    data = {"action": "revoke_selected", "_selected_action": [token.pk]}
    assert admin_client.post("/admin/core/apitoken/", data).status_code == 302
    assert api_status(key) == 401
    event = AuditEvent.objects.get(action="api_token.revoked")
    assert (event.actor, event.object_id) == ("ada-admin", str(token.pk))


@pytest.mark.django_db
def test_revoke_action_needs_the_change_token_permission(client):
    staff = User.objects.create_user("val-staff", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_apitoken"))
    token, key = ApiToken.issue(make_user("erin", "ml_engineer"), "cli")
    data = {"action": "revoke_selected", "_selected_action": [token.pk]}
    client_for(client, staff).post("/admin/core/apitoken/", data)
    token.refresh_from_db()
    assert token.revoked_at is None and api_status(key) == 200


@pytest.mark.django_db
def test_job_admin_refuses_changes_and_deletes(admin_client):
    job = Job.create_queued("tests.core.jobtasks.noop", "default", {})
    data = {"task": job.task, "queue": "default", "status": "succeeded", "kwargs": "{}", "progress": "{}", "result": "null"}
    assert admin_client.post(f"/admin/core/job/{job.pk}/change/", data).status_code == 403
    assert admin_client.post(f"/admin/core/job/{job.pk}/delete/", {"post": "yes"}).status_code == 403
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
