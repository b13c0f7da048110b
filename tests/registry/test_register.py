"""Registering a run's output: numbered, signed versions with their lineage and card; what is
refused and that nothing is written then; the signature checked by the package's own CLI;
tampering found and the version marked."""
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import IntegrityError, connection, transaction

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import AuditEvent, Job
from lifecycle.lib import signing_keys
from lifecycle.registry import signing
from lifecycle.registry.models import ModelVersion, RegisteredModel, RegistryError, Stage
from tests.conftest import make_user
from tests.registry.factories import registered, trained_run

pytestmark = pytest.mark.usefixtures("store_with_output")


@pytest.fixture
def erin(db):
    return make_user("erin", "ml_engineer")


@pytest.mark.django_db
def test_a_run_becomes_version_one_then_two_signed_with_lineage_and_card(trained, erin, tmp_path):
    assert trained["losses"][1] < trained["losses"][0]  # the shared run really trained
    first = registered(trained, erin, tmp_path)
    second = registered(trained, erin, tmp_path)
    assert (first.number, second.number) == (1, 2)
    assert first.stage == Stage.CANDIDATE and first.is_signed_valid
    assert first.output_sha256 == trained["output_sha256"] and first.artifact_bytes > 0
    assert first.labels and first.base_model_name == "all-MiniLM-L6-v2" and len(first.base_model_sha256) == 64
    assert first.metrics["accuracy"] == trained["test_metrics"]["accuracy"]
    assert first.evaluation["per_class"] and first.evaluation["confusion"]["matrix"]
    data = first.run.dataset_version
    assert first.lineage["run"]["id"] == first.run.pk
    assert first.lineage["dataset_version"]["manifest_sha256"] == data.manifest_sha256
    assert "## Training data" in first.card and data.dataset.slug in first.card
    assert "Routes support tickets" in first.card
    assert first.verify().ok
    event = AuditEvent.objects.filter(action="model_version.created").order_by("seq").first()
    assert event.payload["signature"] == first.signature_sha256 and event.payload["number"] == 1


@pytest.mark.django_db
def test_numbers_are_never_given_twice(trained, erin, tmp_path):
    first = registered(trained, erin, tmp_path)
    model = first.model
    with pytest.raises(RegistryError, match="already registered"):
        ModelVersion.register(erin, model, first.run)
    assert RegisteredModel.objects.get(pk=model.pk).last_number == 1
    assert registered(trained, erin, tmp_path).number == 2


@pytest.mark.django_db
def test_a_run_that_did_not_succeed_or_left_no_output_is_refused_and_nothing_is_written(trained, erin, tmp_path):
    model = RegisteredModel.create(erin, name="Router")
    failed = trained_run(trained, erin, tmp_path)
    Job.objects.filter(pk=failed.job_id).update(status=Job.Status.FAILED)
    failed.refresh_from_db()
    with pytest.raises(RegistryError, match="has not succeeded"):
        ModelVersion.register(erin, model, failed)
    empty = trained_run(trained, erin, tmp_path, version=failed.dataset_version)
    type(empty).objects.filter(pk=empty.pk).update(output_sha256="")
    empty.refresh_from_db()
    with pytest.raises(RegistryError, match="left no output"):
        ModelVersion.register(erin, model, empty)
    assert not ModelVersion.objects.exists()
    assert RegisteredModel.objects.get(pk=model.pk).last_number == 0
    assert not AuditEvent.objects.filter(action="model_version.created").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("reference", ["file:///etc/passwd", "/proc/self/environ", "../../x",
                                       "s3://someone-elses-bucket/k", "http://example.com/model", "f" * 64, "ABC"])
def test_an_artifact_reference_that_is_not_our_stores_key_is_refused(trained, erin, tmp_path, reference):
    run = trained_run(trained, erin, tmp_path)
    model = RegisteredModel.create(erin, name="Router")
    with pytest.raises(RegistryError, match="artifact"):
        ModelVersion.register(erin, model, run, artifact=reference)
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_same_run_registered_twice_at_once_makes_one_version(trained, erin, tmp_path):
    run = trained_run(trained, erin, tmp_path)
    model = RegisteredModel.create(erin, name="Router")
    results, barrier = [], threading.Barrier(2)

    def register():
        barrier.wait()
        try:
            results.append(ModelVersion.register(erin, model, run).number)
        except RegistryError as exc:
            results.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=register) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(map(str, results)) == ["1", f"Run {run.pk} is already registered as a version of Router."]
    assert ModelVersion.objects.count() == 1


@pytest.mark.django_db
def test_one_production_and_one_staging_version_per_model_is_a_database_rule(trained, erin, tmp_path):
    first, second = registered(trained, erin, tmp_path), registered(trained, erin, tmp_path)
    for stage in (Stage.PRODUCTION, Stage.STAGING):
        ModelVersion.objects.filter(pk=first.pk).update(stage=stage)
        with pytest.raises(IntegrityError), transaction.atomic():
            ModelVersion.objects.filter(pk=second.pk).update(stage=stage)


@pytest.mark.django_db
def test_the_signature_verifies_with_the_model_signing_command_line(trained, erin, tmp_path, settings):
    version = registered(trained, erin, tmp_path)
    folder = signing.materialize(version.output_sha256, tmp_path / "download" / "model")
    bundle = tmp_path / "download" / "model.sig"
    bundle.write_bytes(get_store().read_bytes(version.signature_sha256))
    public = tmp_path / "download" / "signing-key.pub"
    public.write_bytes(signing_keys.public_pem(settings.SIGNING_KEY_FILE))
    cli = Path(sys.executable).with_name("model_signing")
    ok = subprocess.run([str(cli), "verify", "key", str(folder), "--signature", str(bundle), "--public_key", str(public)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Verification succeeded" in ok.stdout + ok.stderr
    weights = next(folder.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    bad = subprocess.run([str(cli), "verify", "key", str(folder), "--signature", str(bundle), "--public_key", str(public)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "failed" in (bad.stdout + bad.stderr).lower()


@pytest.mark.django_db
def test_an_artifact_altered_on_disk_fails_the_signature_and_the_load_and_marks_the_version(trained, erin, tmp_path, settings):
    from lifecycle.runs import outputs

    version = registered(trained, erin, tmp_path)
    manifest = outputs.read_manifest(version.output_sha256)
    weights = next(sha for name, sha in manifest["files"].items() if name.endswith(".safetensors"))
    path = get_store().path(weights)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    check = version.verify()
    assert not check.ok and "failed" in check.message
    version.refresh_from_db()
    assert version.signature_status == ModelVersion.Signature.INVALID and version.signature_error
    with pytest.raises(RegistryError, match="signature check"):
        version.load_checked()
    assert AuditEvent.objects.filter(action="model_version.signature_failed", object_id=str(version.pk)).count() == 1


@pytest.mark.django_db
def test_a_replaced_signature_bundle_fails_too(trained, erin, tmp_path):
    version = registered(trained, erin, tmp_path)
    other_key = tmp_path / "other.pem"
    signing_keys.create(other_key)
    import model_signing

    folder = signing.materialize(version.output_sha256, tmp_path / "m")
    model_signing.signing.Config().use_elliptic_key_signer(private_key=other_key).sign(folder, tmp_path / "forged.sig")
    forged = get_store().put_file(tmp_path / "forged.sig").sha256
    ModelVersion.objects.filter(pk=version.pk).update(signature_sha256=forged)
    version.refresh_from_db()
    assert not version.verify().ok
    version.refresh_from_db()
    assert version.signature_status == ModelVersion.Signature.INVALID


@pytest.mark.django_db
def test_a_good_load_gives_a_folder_whose_files_match_the_manifest(trained, erin, tmp_path):
    version = registered(trained, erin, tmp_path)
    folder = version.load_checked()
    try:
        assert (folder / signing.MANIFEST_NAME).is_file()
        assert any(folder.rglob("*.safetensors"))
    finally:
        shutil.rmtree(folder)
