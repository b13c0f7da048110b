"""Built-in background tasks of the core app (see core/jobs.py for how tasks run)."""
from lifecycle.core.jobs import task
from lifecycle.core.models import AuditEvent
from lifecycle.core.roles import AUDIT_ROLES


@task(queue="monitoring", roles=AUDIT_ROLES)
def verify_audit_chain(job):
    """Walk the whole audit chain and report the first broken link, if any."""
    job.set_progress(phase="verifying")
    broken = AuditEvent.verify_chain()
    if broken is None:
        return {"intact": True, "first_bad_seq": None, "reason": ""}
    seq, reason = broken
    return {"intact": False, "first_bad_seq": seq, "reason": reason}
