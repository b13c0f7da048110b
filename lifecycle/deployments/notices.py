"""Route-change notices over Redis pub/sub: the web tier publishes after a change commits;
every serving process subscribes and re-reads its routes from PostgreSQL. A notice carries no
state, only "deployment D is at generation G now", so a lost one costs at most one periodic
re-read (SERVING_ROUTES_REFRESH_SECONDS)."""
import json
import logging

from lifecycle.core import queues

CHANNEL = "lifecycle:routes"
log = logging.getLogger(__name__)


def publish(deployment_id, generation):
    try:
        queues.get_connection("default").publish(CHANNEL, json.dumps({"deployment": deployment_id,
                                                                      "generation": generation}))
        return True
    except Exception as exc:  # Redis down: serving processes pick the change up at their next re-read
        log.warning("route notice for deployment %s not sent (%s); serving re-reads within its refresh period",
                    deployment_id, type(exc).__name__)
        return False


def redis_ok():
    try:
        return bool(queues.get_connection("default").ping())
    except Exception:
        return False
