from lifecycle.core.jobs import task


@task(queue="training")
def train_run(job, *, run_id, resume=False):
    """Train (or, with resume, continue) a run; see runs/training.py."""
    from lifecycle.runs import worker

    return worker.train(job, run_id=run_id, resume=resume)
