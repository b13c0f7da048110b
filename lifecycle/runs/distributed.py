"""Several training processes for one job (one per GPU), through the standard launcher.

The job's work horse runs `python -m torch.distributed.run --standalone --nproc_per_node=N -m
lifecycle.runs.distributed JOB RUN RESULT new|resume` (torchrun) and waits; every process runs the ordinary training
path (worker.train_here) with its rank, DistributedDataParallel joins the gradients, and the
first process alone writes telemetry, checkpoints and the output. NCCL on GPUs, gloo on CPU.

The horse keeps the job's heartbeat; a cancel, or the reaper marking the job interrupted
after the horse died, is seen by rank 0's own poll of the job row, and torchrun stops the
other processes when one fails.
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


class DistributedFailure(Exception):
    pass


def launch(job, *, run_id, resume, processes):
    from django.conf import settings

    from lifecycle.core.jobs import JobCancelled

    with tempfile.TemporaryDirectory(prefix="lifecycle-ddp-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   # Positional arguments: torchrun would take "--run…" for an abbreviation of its own options.
                   "-m", "lifecycle.runs.distributed", str(job.id), str(run_id), str(result), "resume" if resume else "new"]
        with open(Path(tmp) / "torchrun.log", "w+") as output:
            process = subprocess.Popen(command, cwd=settings.BASE_DIR,
                                       stdout=output, stderr=subprocess.STDOUT)
            while process.poll() is None:
                time.sleep(0.5)
            output.seek(0)
            tail = output.read()[-3000:]
        outcome = json.loads(result.read_text()) if result.exists() else {}
    if "result" in outcome:
        return outcome["result"]
    if "cancelled" in outcome:
        raise JobCancelled(outcome["cancelled"])
    log.error("torchrun for run %s exited with %s:\n%s", run_id, process.returncode, tail)
    raise DistributedFailure(outcome.get("error") or f"torchrun exited with status {process.returncode}; "
                                                    f"its last output: {tail[-500:]}")


class ChildJob:
    """What worker.train_here needs of its job inside a torchrun process: progress and the id.
    Cancels are noticed by polling the row (DbReporter.stop_requested)."""

    def __init__(self, job_id):
        from lifecycle.core.models import Job

        self.id = job_id
        self.row = Job.objects.get(pk=job_id)

    def set_progress(self, phase="", done=None, total=None, **extra):
        self.row.set_progress(phase, done, total, **extra)

    def cancel_requested(self):
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description="one process of a multi-process training job (run by torchrun)")
    parser.add_argument("job", type=int)
    parser.add_argument("run", type=int)
    parser.add_argument("result")
    parser.add_argument("mode", choices=["new", "resume"])
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lifecycle.settings")
    import django

    django.setup()
    import torch
    import torch.distributed as dist

    from lifecycle.core.jobs import JobCancelled
    from lifecycle.runs import worker

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    try:
        outcome = {"result": worker.train_here(ChildJob(args.job), run_id=args.run, resume=args.mode == "resume",
                                               rank=rank, world=world, device=device)}
    except JobCancelled as exc:
        outcome = {"cancelled": str(exc)}
    except Exception as exc:
        log.exception("rank %s of run %s failed", rank, args.run)
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(args.result).write_text(json.dumps(outcome))
    return 0 if "result" in outcome else 1


if __name__ == "__main__":
    sys.exit(main())
