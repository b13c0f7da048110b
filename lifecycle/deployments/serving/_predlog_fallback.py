"""A stand-in for serving/predlog.py's PredictionBuffer with the same interface, used only
until that module is in place: rows buffered in memory and written with bulk_create by a
background thread. It has no spool (rows are dropped and counted while the database is
away). Delete this file once predlog.py is merged."""
import logging
import threading

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)
LOG_BUFFERED = Gauge("lifecycle_serving_prediction_log_buffered", "Prediction log entries waiting to be written",
                     multiprocess_mode="livesum")
LOG_WRITTEN = Counter("lifecycle_serving_prediction_log_written_total", "Prediction log entries written")
LOG_SPOOLED = Counter("lifecycle_serving_prediction_log_spooled_total", "Prediction log entries spooled")
LOG_DROPPED = Counter("lifecycle_serving_prediction_log_dropped_total", "Prediction log entries dropped")


class PredictionBuffer:
    def __init__(self, process_id, *, flush_seconds, spool_dir, spool_max_bytes):
        self.process_id, self.flush_seconds = process_id, flush_seconds
        self.rows, self.lock = [], threading.Lock()
        self.counts = {"written": 0, "spooled": 0, "replayed": 0, "dropped": 0}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def start(self):
        self.thread.start()

    def add(self, rows):
        with self.lock:
            self.rows.extend(rows)
            LOG_BUFFERED.set(len(self.rows))

    def flush(self):
        from django.db import DatabaseError, connection

        from lifecycle.deployments.models import PredictionLog

        with self.lock:
            rows, self.rows = self.rows, []
        if not rows:
            return 0
        try:
            PredictionLog.objects.bulk_create([PredictionLog(**row) for row in rows], ignore_conflicts=True)
        except DatabaseError:
            connection.close()
            log.exception("%d prediction log rows dropped", len(rows))
            self.counts["dropped"] += len(rows)
            LOG_DROPPED.inc(len(rows))
            return 0
        finally:
            LOG_BUFFERED.set(len(self.rows))
        self.counts["written"] += len(rows)
        LOG_WRITTEN.inc(len(rows))
        return len(rows)

    def _run(self):
        while not self.stopping.wait(self.flush_seconds):
            self.flush()

    def stop(self, timeout=10):
        self.stopping.set()
        self.thread.join(timeout)
        self.flush()

    def stats(self):
        with self.lock:
            return {"buffered": len(self.rows), **self.counts}
