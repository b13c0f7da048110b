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
