"""Built-in background tasks of the core app (see core/jobs.py for how tasks run)."""
from django.urls import reverse

from lifecycle.core.jobs import Outcome, task
from lifecycle.core.models import AuditEvent
from lifecycle.core.roles import AUDIT_ROLES


def _audit_outcome(job):
    links = (("Audit log", reverse("audit")),)
    if job.result["intact"]:
        return Outcome("The audit chain is intact.", links)
    return Outcome(f"The audit chain is broken at event #{job.result['first_bad_seq']}: {job.result['reason']}", links)


@task(queue="monitoring", roles=AUDIT_ROLES, outcome=_audit_outcome)
def verify_audit_chain(job):
    """Walk the whole audit chain and report the first broken link, if any."""
    job.set_progress(phase="verifying")
    broken = AuditEvent.verify_chain()
    if broken is None:
        return {"intact": True, "first_bad_seq": None, "reason": ""}
    seq, reason = broken
    return {"intact": False, "first_bad_seq": seq, "reason": reason}
