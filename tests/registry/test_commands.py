"""manage.py model_register, governance_export and signing_key: what each prints and writes,
each refusal with its reason and nothing written, and the first signing key made by following
the settings' own error message in a real manage.py process."""
import json
import os
import secrets
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from lifecycle.core.models import AuditEvent, Job
from lifecycle.lib import signing_keys
from lifecycle.registry import export
from lifecycle.registry.models import ModelVersion, RegisteredModel
from tests.registry.factories import make_model, registered, trained_run

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db


@pytest.fixture
def erin(db):
    return User.objects.create(username="erin")


def command(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def counts():
    return RegisteredModel.objects.count(), ModelVersion.objects.count(), AuditEvent.objects.count()


# --- model_register ----------------------------------------------------------------------------


def test_model_register_creates_the_model_when_asked_and_prints_the_version(trained, store_with_output, erin, tmp_path):
    run = trained_run(trained, erin, tmp_path)
    out, _ = command("model_register", str(run.pk), "--model", "intent-router", "--create-model", "Intent Router",
                     "--user", "erin")
    assert out.strip() == "intent-router:1"
    version = ModelVersion.objects.get()
    assert version.model.name == "Intent Router" and version.registered_by == erin and version.is_signed_valid
    second = trained_run(trained, erin, tmp_path)
    out, _ = command("model_register", str(second.pk), "--model", "intent-router")
    assert out.strip() == "intent-router:2" and ModelVersion.objects.get(number=2).registered_by is None


def test_model_register_refuses_with_the_reason_and_writes_nothing(trained, store_with_output, erin, tmp_path):
    run = trained_run(trained, erin, tmp_path)
    failed = trained_run(trained, erin, tmp_path)
    Job.objects.filter(pk=failed.job_id).update(status=Job.Status.FAILED)
    before = counts()
    with pytest.raises(CommandError, match="no registered model 'intent-router'; add --create-model NAME"):
        command("model_register", str(run.pk), "--model", "intent-router")
    # A refused run does not leave an empty model behind, even with --create-model.
    with pytest.raises(CommandError, match=f"not registered: Run {failed.pk} has not succeeded"):
        command("model_register", str(failed.pk), "--model", "intent-router", "--create-model", "Intent Router")
    with pytest.raises(CommandError, match="no run 999999"):
        command("model_register", "999999", "--model", "intent-router", "--create-model", "Intent Router")
    with pytest.raises(CommandError, match="no user 'nobody'"):
        command("model_register", str(run.pk), "--model", "intent-router", "--user", "nobody")
    assert counts() == before
    make_model(erin, "intent-router")
    with pytest.raises(CommandError, match="exists already, named 'Intent Router'"):
        command("model_register", str(run.pk), "--model", "intent-router", "--create-model", "Another Name")
    command("model_register", str(run.pk), "--model", "intent-router")
    with pytest.raises(CommandError, match=f"Run {run.pk} is already registered"):
        command("model_register", str(run.pk), "--model", "intent-router")
    assert ModelVersion.objects.count() == 1


# --- governance_export -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["intent-router:1", "intent-router/1"])
def test_governance_export_writes_the_json_that_the_checker_accepts(trained, store_with_output, erin, tmp_path, spec):
    registered(trained, erin, tmp_path)
    out = tmp_path / "export.json"
    _, err = command("governance_export", spec, "--out", str(out), "--user", "erin")
    doc = json.loads(out.read_text())
    assert doc["version"]["number"] == 1 and doc["exported_by"] == "erin" and doc["signature"]["verification"]["ok"]
    assert doc["export_sha256"] == export.digest(doc) and doc["export_sha256"] in err
    checked = subprocess.run([sys.executable, str(ROOT / "docs" / "verify_export.py"), str(out)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout


def test_governance_export_html_is_a_standalone_page_and_out_dash_prints_the_json(trained, store_with_output, erin, tmp_path):
    registered(trained, erin, tmp_path)
    out = tmp_path / "export.html"
    command("governance_export", "intent-router:1", "--out", str(out), "--html")
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "Intent Router — version 1" in page
    assert "<style>" in page and "@page { size: A4;" in page and "/static/" not in page
    printed, _ = command("governance_export", "intent-router/1", "--out", "-")
    assert json.loads(printed)["version"]["number"] == 1


@pytest.mark.parametrize("spec, message", [
    ("intent-router", "names no version: write SLUG:NUMBER or SLUG/NUMBER"),
    ("intent-router:one", "names no version"),
    ("../etc/passwd:1", "names no version"),
    ("intent-router:2", "no version 2 of a model 'intent-router'"),
    ("other:1", "no version 1 of a model 'other'"),
])
def test_governance_export_names_a_version_or_says_why_not(trained, store_with_output, erin, tmp_path, spec, message):
    registered(trained, erin, tmp_path)
    out = tmp_path / "export.json"
    with pytest.raises(CommandError, match=message):
        command("governance_export", spec, "--out", str(out))
    assert not out.exists()


# --- signing_key -------------------------------------------------------------------------------


def test_signing_key_creates_a_private_key_once_and_never_overwrites_it(tmp_path):
    path = tmp_path / "keys" / "registry.pem"
    out, _ = command("signing_key", "--create", str(path))
    assert f"set SIGNING_KEY_FILE={path}" in out and "BEGIN PUBLIC KEY" in out
    assert path.stat().st_mode & 0o777 == 0o600
    pem = path.read_bytes()
    assert b"BEGIN PRIVATE KEY" in pem
    with pytest.raises(CommandError, match="exists already; a signing key is never overwritten"):
        command("signing_key", "--create", str(path))
    assert path.read_bytes() == pem


def test_signing_key_prints_or_writes_the_configured_public_key(tmp_path, settings):
    out, _ = command("signing_key", "--public")
    assert out.encode() == signing_keys.public_pem(settings.SIGNING_KEY_FILE)
    target = tmp_path / "signing-key.pub"
    command("signing_key", "--public", "--out", str(target))
    assert target.read_bytes() == signing_keys.public_pem(settings.SIGNING_KEY_FILE)
    settings.SIGNING_KEY_FILE = str(tmp_path / "missing.pem")
    with pytest.raises(CommandError, match="no signing key at .*missing.pem; make one with --create PATH"):
        command("signing_key", "--public")
    assert not (tmp_path / "missing.pem").exists()
    with pytest.raises(CommandError, match="--out goes with --public"):
        command("signing_key", "--create", str(tmp_path / "k.pem"), "--out", str(target))


def manage(*args, **env):
    clean = {"PATH": os.environ["PATH"], "LIFECYCLE_DATA_DIR": os.environ["LIFECYCLE_DATA_DIR"],
             "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "lifecycle.example.com", **env}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=120)


def test_the_first_key_is_made_the_way_the_settings_error_says(tmp_path):
    path = tmp_path / "registry-signing.pem"
    refused = manage("check")
    assert refused.returncode != 0
    assert "make one with: DEBUG=true manage.py signing_key --create PATH, then set SIGNING_KEY_FILE=PATH" in refused.stderr
    made = manage("signing_key", "--create", str(path), DEBUG="true")
    assert made.returncode == 0, made.stderr
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600
    # Naming the path to create in SIGNING_KEY_FILE works as well, and still never overwrites.
    named = tmp_path / "named.pem"
    assert manage("signing_key", "--create", str(named), DEBUG="true", SIGNING_KEY_FILE=str(named)).returncode == 0
    again = manage("signing_key", "--create", str(path), DEBUG="true", SIGNING_KEY_FILE=str(path))
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert named.is_file() and named.read_bytes() != path.read_bytes()
    public = manage("signing_key", "--public", SIGNING_KEY_FILE=str(path))  # DEBUG off: production settings
    assert public.returncode == 0, public.stderr
    assert public.stdout.encode() == signing_keys.public_pem(path)
