"""manage.py run_start: start a run from a JSON file, and with --wait report how it ended."""
import io
import json

import pytest
from django.core.management import CommandError, call_command

from lifecycle.core.models import Job
from lifecycle.runs.management.commands import run_start
from lifecycle.runs.models import Run
from tests.conftest import make_user
from tests.runs.test_web import MINILM, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(tmp_path):
    return make_version(tmp_path)


def write_config(tmp_path, data):
    path = tmp_path / "run.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def good_config(version, **changes):
    return {"dataset_version": version.pk, "base_model": MINILM, "epochs": 1, "max_length": 64, **changes}


def start(*args, **options):
    out = io.StringIO()
    call_command("run_start", *args, stdout=out, **options)
    return out.getvalue().splitlines()


def test_starts_a_run_and_prints_its_id(tmp_path, version):
    lines = start("--config", write_config(tmp_path, good_config(version, name="nightly")))
    run = Run.objects.get()
    assert lines == [str(run.pk)]
    assert run.name == "nightly" and run.created_by is None and run.job.status == "queued" and run.job.queue == "training"


def test_records_the_user(tmp_path, version):
    make_user("erin", "ml_engineer")
    start("--config", write_config(tmp_path, good_config(version)), "--user", "erin")
    assert Run.objects.get().created_by.username == "erin"
    with pytest.raises(CommandError, match="no user 'nobody'"):
        start("--config", write_config(tmp_path, good_config(version)), "--user", "nobody")
    assert Run.objects.count() == 1


@pytest.mark.parametrize("content, message", [
    ('{"dataset_version": 1,', "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object of run settings, not list"),
    ("\udcff", "is not valid JSON"),
])
def test_bad_files_are_refused(tmp_path, version, content, message):
    path = tmp_path / "run.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(CommandError, match=message):
        start("--config", str(path))
    with pytest.raises(CommandError, match="cannot read .*missing.json"):
        start("--config", str(tmp_path / "missing.json"))
    assert not Run.objects.exists()


def test_a_bad_config_lists_every_problem(tmp_path, version):
    path = write_config(tmp_path, good_config(version, learning_rate=0, target_modules=["q_proj"], max_length=10000))
    with pytest.raises(CommandError) as raised:
        start("--config", path)
    message = str(raised.value)
    assert "learning_rate: must be a number above 0" in message
    path = write_config(tmp_path, good_config(version, target_modules=["q_proj"], max_length=10000))
    with pytest.raises(CommandError) as raised:
        start("--config", path)
    message = str(raised.value)
    assert "target_modules: all-MiniLM-L6-v2 has no module called q_proj" in message
    assert "max_length: max length 10000 is above all-MiniLM-L6-v2's limit of 512 positions" in message
    assert not Run.objects.exists() and not Job.objects.filter(queue="training").exists()


# --wait against a real worker is in tests/runs/test_worker.py.


def test_wait_gives_up_after_the_timeout(tmp_path, version, monkeypatch):
    monkeypatch.setattr(run_start.time, "sleep", lambda seconds: None)
    with pytest.raises(CommandError, match=r"gave up waiting after 0 s: run \d+ is still queued"):
        start("--config", write_config(tmp_path, good_config(version)), "--wait", "--timeout", "0")
    assert Run.objects.get().job.status == "queued"
