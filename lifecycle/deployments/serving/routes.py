"""Routes: what each deployment serves, as this process applies it.

The database says what should serve (Deployment.all_routes()); this module decides what this
process can serve now. A generation is applied once every version it names is loaded (and
reported to the database at that moment: ServingProcess.applied, which is how a rollback's
time is measured); until then the previous route keeps answering. A deployment with no
previous route (the process just started) answers from its stable version alone while its
candidate loads: an interim route, never reported as applied.
"""
import dataclasses
import logging
import threading

from lifecycle.deployments.routing import CANARY, STABLE

log = logging.getLogger(__name__)
SHADOW = "shadow"


@dataclasses.dataclass(frozen=True)
class Route:
    deployment: int
    name: str
    generation: int
    release: int
    stable: int
    candidate: int | None
    mode: str
    share: float
    interim: bool = False  # stable only while the candidate loads; not this generation yet

    @classmethod
    def of(cls, row):
        return cls(deployment=row["deployment"], name=row["name"], generation=row["generation"],
                   release=row["release"], stable=row["stable"], candidate=row["candidate"], mode=row["mode"] or "",
                   share=float(row["share"] or 0.0))

    @property
    def versions(self):
        return {self.stable} | ({self.candidate} if self.candidate else set())

    def stable_only(self):
        return dataclasses.replace(self, candidate=None, mode="", share=0.0, interim=True)


@dataclasses.dataclass
class Plan:
    """What to do with one deployment's route as read: serve `route` (None: nothing to serve
    yet), or answer 503 with `unavailable`; report `ack` as applied; load `load`; drop the
    candidate with `drop` (its reason)."""

    route: Route | None = None
    unavailable: str = ""
    ack: bool = False
    load: tuple = ()
    drop: str = ""


def plan(read, current, loaded, failure):
    """The plan for one deployment: `read` is its route from the database, `current` what this
    process serves now (or None), `loaded(v)` whether version v is loaded, `failure(v)` why it
    cannot be (a permanent failure's reason, or "")."""
    if current is not None and current.deployment != read.deployment:
        current = None  # the name now belongs to another deployment: nothing of the old one serves it
    stable_failed, candidate_failed = failure(read.stable), read.candidate and failure(read.candidate)
    if stable_failed:
        # Nothing serves, so nothing from the candidate either: this generation counts as applied.
        return Plan(unavailable=f"The stable version cannot be served: {stable_failed}", ack=True)
    missing = tuple(v for v in sorted(read.versions) if not loaded(v))
    if candidate_failed:
        fallback = current if current and read.candidate not in current.versions else None
        if fallback is None and loaded(read.stable):
            fallback = read.stable_only()
        return Plan(route=fallback, drop=candidate_failed, load=tuple(v for v in missing if v != read.candidate))
    if missing:
        fallback = current
        if fallback is None and loaded(read.stable):
            fallback = read.stable_only()
        return Plan(route=fallback, load=missing)
    return Plan(route=read, ack=True)


class Failures:
    """Versions that could not be loaded: permanent (signature, broken files) or, after a
    database error, retried once `retry_at` has passed."""

    def __init__(self):
        self._failed = {}
        self._lock = threading.Lock()

    def add(self, version_id, reason, *, retry_at=None):
        with self._lock:
            self._failed[version_id] = (reason, retry_at)

    def permanent(self, version_id):
        with self._lock:
            reason, retry_at = self._failed.get(version_id, ("", None))
            return reason if reason and retry_at is None else ""

    def waiting(self, version_id, now):
        """True while a transient failure's retry time has not come."""
        with self._lock:
            reason, retry_at = self._failed.get(version_id, ("", None))
            if retry_at is not None and now >= retry_at:
                del self._failed[version_id]
                return False
            return retry_at is not None


def side_for(route, key, choose):
    """"stable" or "canary" for one request on `route` (a shadow's candidate never answers)."""
    if route.mode == CANARY and route.candidate:
        return choose(route.share, route.release, key)
    return STABLE
