"""Races and resource failures with the real database and real processes: two resumes at
the same moment, and a run that runs out of memory."""
import subprocess
import sys
import threading
import textwrap

import pytest
from django.db import connections

from lifecycle.core.models import Job
from lifecycle.runs.models import Checkpoint, Run, RunError
from tests.conftest import make_user
from tests.runs.factories import ROOT_DIR
from tests.runs.test_web import make_run, make_version


@pytest.mark.django_db(transaction=True)
def test_two_resumes_at_the_same_moment_make_one_new_attempt(tmp_path):
    engineer = make_user("erin", "ml_engineer")
    run = make_run(make_version(tmp_path), user=engineer, status=Job.Status.INTERRUPTED)
    Checkpoint.objects.create(run=run, step=10, weights_sha256="a" * 64, state_sha256="b" * 64, size=1)
    barrier, outcomes = threading.Barrier(2), []

    def resume():
        try:
            barrier.wait()
            Run.objects.get(pk=run.pk).resume(engineer)
            outcomes.append("resumed")
        except RunError as exc:
            outcomes.append(str(exc))
        except Exception as exc:
            outcomes.append(f"unexpected {type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["resumed", "the run is queued; only an interrupted, failed or cancelled run can resume"]
    run.refresh_from_db()
    assert run.attempt == 2
    assert Job.objects.filter(task="lifecycle.runs.tasks.train_run", kwargs__resume=True).count() == 1


OOM_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from lifecycle.runs import data as D, training
    from lifecycle.runs.config import RunConfig
    config = RunConfig.parse({{"dataset_version": 1, "base_model": "m", "task": "causal_lm", "method": "full",
                              "batch_size": 512, "max_length": 4096}})
    model, tok = training.load_model(config, {model!r})
    ids = [np.arange(4096) % 20 + 4 for _ in range(512)]
    labels = [np.concatenate([[-100], x[1:]]) for x in ids]
    ex = D.Examples(np.arange(512), ids, labels)
    trainer = training.Trainer(config, model, tok, training.TrainData(ex, ex, ex))
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    resource.setrlimit(resource.RLIMIT_AS, (usage * 3, usage * 3))  # room to run, none for this batch
    try:
        trainer._train_step()
    except training.OutOfMemory as exc:
        print("OOM:", exc)
""")


def test_running_out_of_memory_names_the_batch_and_what_to_change(tmp_path, tiny_model_dir):
    """A real allocation failure (an address-space limit in a child process), not a stand-in."""
    script = tmp_path / "oom.py"
    script.write_text(OOM_SCRIPT.format(root=str(ROOT_DIR), model=str(tiny_model_dir)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert "OOM: out of memory at batch size 512 × max length 4096 on cpu" in result.stdout, result.stderr[-2000:]
    assert "gradient accumulation" in result.stdout and "gradient checkpointing" in result.stdout
