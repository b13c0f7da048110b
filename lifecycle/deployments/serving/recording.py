"""From answers to prediction log rows, off the request's path.

The event loop hands each answered request's rows over as they are; one thread masks the
inputs by the source dataset's PII policy (datasets/pii.py: "allow" keeps the text as it is,
every other policy stores it redacted, placeholders such as <EMAIL> in place of what was found)
and adds them to the PredictionBuffer, which writes them in batches. Masking scans the text,
which is too slow for the event loop; the buffer's add never blocks.
"""
import logging
import queue
import threading

from django.conf import settings

from lifecycle.datasets import pii

log = logging.getLogger(__name__)
ALLOW = "allow"
_STOP = object()


def mask(text, policy):
    return text if policy == ALLOW else pii.redact(text)


class Recorder:
    def __init__(self, buffer):
        self.buffer = buffer
        self.queue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="prediction-recorder", daemon=True)

    def start(self):
        self.thread.start()

    def record(self, rows, policy):
        """Rows (PredictionLog fields, input_text unmasked) of one version, whose PII policy is
        `policy`. Called on the event loop; returns at once. With SERVING_LOG_PREDICTIONS off
        nothing is kept (the benchmark's logging-off run; feedback then finds no prediction)."""
        if settings.SERVING_LOG_PREDICTIONS:
            self.queue.put((rows, policy))

    def flush(self, timeout=30.0):
        """Wait until everything handed over so far is in the buffer (feedback may name an
        answer whose rows are still being masked here)."""
        done = threading.Event()
        self.queue.put(done)
        return done.wait(timeout) if self.thread.is_alive() else True

    def _run(self):
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            rows, policy = item
            try:
                for row in rows:
                    row["input_text"] = mask(row["input_text"], policy)
                self.buffer.add(rows)
            except Exception:  # noqa: BLE001 - one bad row must not stop the log
                log.exception("prediction log rows not recorded")

    def stop(self, timeout=10):
        """Record what was handed over, then stop (the buffer's own stop flushes it)."""
        self.queue.put(_STOP)
        self.thread.join(timeout)
