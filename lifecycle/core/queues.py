"""Redis connections for the RQ queues, and a clear error when Redis is not there."""
import django_rq
from redis.exceptions import RedisError


class QueueUnavailable(Exception):
    """Redis cannot be reached: the job was not enqueued and nothing was written."""

    def __init__(self, detail=""):
        super().__init__("The job queue is unavailable (Redis cannot be reached). Nothing was started; try again when it is back.")
        self.detail = detail


def get_queue(name, **kwargs):
    return django_rq.get_queue(name, **kwargs)


def get_connection(queue_name="default"):
    return get_queue(queue_name).connection


def ping(queue_name="default"):
    """Raise QueueUnavailable unless the queue's Redis answers."""
    try:
        get_queue(queue_name).connection.ping()
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(type(exc).__name__) from None


def redis_status():
    try:
        ping()
        return "ok"
    except QueueUnavailable as exc:
        return f"unavailable ({exc.detail})"


def listening_workers(queue_name):
    """The live RQ workers that take jobs from `queue_name`; raises QueueUnavailable when Redis
    does not answer. A worker's registration expires with its heartbeat (RQ's worker TTL), so
    one killed outright still counts for that long."""
    from rq import Worker

    try:
        queue = get_queue(queue_name)
        return Worker.all(connection=queue.connection, queue=queue)
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(type(exc).__name__) from None


def current_rq_job_ids(workers):
    """The RQ ids of the jobs these workers are running now (busy workers only)."""
    ids = []
    for worker in workers:
        try:
            rq_id = worker.get_current_job_id()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(type(exc).__name__) from None
        if rq_id:
            ids.append(rq_id)
    return ids
