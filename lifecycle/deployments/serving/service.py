"""One serving process: its routes, loaded versions, background threads and the predict step.

Threads (the event loop never touches the ORM):
- routes: re-reads Deployment.all_routes() and ServingToken.table() on every Redis notice and
  every SERVING_ROUTES_REFRESH_SECONDS, plans each deployment (serving/routes.py), swaps the
  routes the event loop reads, and reports each applied generation at once;
- loader: verifies, loads and warms versions the routes need, one at a time;
- notices: the Redis subscription (down: notices_ok False, the periodic re-read still runs);
- heartbeat: ServingProcess.beat every second, with what is loaded;
- recorder: masks inputs and hands log rows to the PredictionBuffer (serving/recording.py).
"""
import asyncio
import logging
import os
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from lifecycle.deployments import notices, routing
from lifecycle.deployments.serving import errors, loaded, metrics, routes
from lifecycle.deployments.serving.batching import Batcher, Overloaded
from lifecycle.deployments.serving.ratelimit import RateLimiter
from lifecycle.deployments.serving.recording import Recorder

from lifecycle.deployments.serving.predlog import PredictionBuffer

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 1.0
# After a database error a version's load is tried again this much later.
LOAD_RETRY_SECONDS = 5.0
NOTICE_RECONNECT_SECONDS = 1.0


@dataclass
class Answer:
    request_id: uuid.UUID
    route: routes.Route
    side: str
    model: loaded.LoadedModel
    outputs: list


class Service:
    def __init__(self, *, port=None):
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.port = port
        self.started_at = timezone.now()
        self.process_id = f"{self.host}:{self.pid}:{int(self.started_at.timestamp())}"[:200]
        self.cache = loaded.ModelCache(settings.SERVING_MEMORY_BUDGET_MB * 1024 * 1024)
        self.failures = routes.Failures()
        self.read = {}  # name -> Route, as last read from the database
        self.applied = {}  # name -> Route this process serves now (swapped whole, never edited)
        self.unavailable = {}  # name -> why the deployment answers 503
        self.tokens = {}  # key hash -> ServingToken.table() row
        self.routes_read = False
        self.notices_ok = False
        self.acked = {}  # deployment id -> generation reported as applied
        self.dropped = set()  # release ids whose candidate this process asked to drop
        self.loading, self.load_queue = set(), queue.Queue()
        self.used_tokens = set()
        self.shadows = set()
        self.troubles = set()  # steps failing now (logged once)
        self.wake_event, self.stopping = threading.Event(), threading.Event()
        self.threads = []
        self.loop = None
        self.buffer = PredictionBuffer(self.process_id, flush_seconds=settings.SERVING_LOG_FLUSH_SECONDS,
                                       spool_dir=settings.SERVING_SPOOL_DIR,
                                       spool_max_bytes=settings.SERVING_SPOOL_MAX_MB * 1024 * 1024)
        self.recorder = Recorder(self.buffer)
        # ORM work asked for by requests (feedback) runs here, never on the event loop.
        self.orm = ThreadPoolExecutor(max_workers=4, thread_name_prefix="orm")
        self.limiter = None

    # --- start and stop ---------------------------------------------------------------------

    async def start(self):
        self.loop = asyncio.get_running_loop()
        self.limiter = RateLimiter()
        self.buffer.start()
        self.recorder.start()
        for name, target in (("routes", self._routes_loop), ("loader", self._loader_loop),
                             ("notices", self._notices_loop), ("heartbeat", self._heartbeat_loop)):
            thread = threading.Thread(target=target, name=f"serving-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        log.info("serving process %s started", self.process_id)

    async def stop(self):
        self.stopping.set()
        self.wake_event.set()
        for thread in self.threads:
            await asyncio.to_thread(thread.join, 5)
        if self.shadows:
            await asyncio.wait(self.shadows, timeout=5)
        await asyncio.to_thread(self.recorder.stop)
        await asyncio.to_thread(self.buffer.stop)
        await asyncio.to_thread(self._leave)
        await self.limiter.close()
        self.orm.shutdown(wait=False)
        metrics.process_exited(self.pid)
        log.info("serving process %s stopped", self.process_id)

    def _leave(self):
        """A clean stop: show this process as gone at once, so no rollback waits for it
        (a killed one is waited for until its last beat is PROCESS_LIVE_SECONDS old)."""
        from lifecycle.deployments.models import ServingProcess

        try:
            ServingProcess.leave(self.process_id)
        except DatabaseError:
            pass

    def wake(self):
        self.wake_event.set()

    # --- routes ------------------------------------------------------------------------------

    def _routes_loop(self):
        while not self.stopping.is_set():
            self.wake_event.clear()
            try:
                self.refresh()
            except DatabaseError as exc:
                self._trouble("routes", f"routes not re-read ({exc.__class__.__name__}); serving the last ones")
                connection.close()
            except Exception:  # noqa: BLE001 - keep serving the last routes whatever happened
                log.exception("routes not re-read; serving the last ones")
            else:
                self._trouble("routes", None)
            self.wake_event.wait(settings.SERVING_ROUTES_REFRESH_SECONDS)

    def _trouble(self, what, message):
        """Log a failing step once when it starts failing and once when it recovers, not at
        every try (the routes and the heartbeat retry every second)."""
        if message and what not in self.troubles:
            log.warning(message)
            self.troubles.add(what)
        elif not message and what in self.troubles:
            log.info("%s: the database answers again", what)
            self.troubles.discard(what)

    def refresh(self):
        from lifecycle.deployments.models import Deployment, ServingToken

        read = {row["name"]: routes.Route.of(row) for row in Deployment.all_routes()}
        self.tokens = ServingToken.table()
        self.read, self.routes_read = read, True
        self.apply()

    def apply(self):
        """Plan every deployment, swap in what can serve now, then report what was applied."""
        applied, unavailable, acks, drops = {}, {}, [], []
        for name, read in self.read.items():
            plan = routes.plan(read, self.applied.get(name), self.cache.__contains__, self.failures.permanent)
            if plan.route is not None:
                applied[name] = plan.route
            if plan.unavailable:
                unavailable[name] = plan.unavailable
            if plan.ack and self.acked.get(read.deployment, 0) < read.generation:
                acks.append(read)
            if plan.drop and read.release not in self.dropped:
                drops.append((read, plan.drop))
            for version_id in plan.load:
                self._request_load(version_id)
        self.applied, self.unavailable = applied, unavailable
        applied_at = timezone.now()
        for read in acks:
            self._ack(read, applied_at)
        for read, reason in drops:
            self._drop(read, reason)

    def _ack(self, read, applied_at):
        from lifecycle.deployments.models import ServingProcess

        try:
            ServingProcess.applied(self.process_id, read.deployment, read.generation, applied_at)
        except DatabaseError as exc:  # the row may not exist yet (first beat) or the database is away
            log.info("generation %s of %s not reported yet (%s)", read.generation, read.name, exc.__class__.__name__)
            connection.close()
            return
        self.acked[read.deployment] = read.generation

    def _drop(self, read, reason):
        """The candidate did not load here: roll it back (audited); stable keeps serving."""
        from lifecycle.deployments.models import Release

        self.dropped.add(read.release)
        try:
            release = Release.objects.select_related("deployment").get(pk=read.release)
            rollback = release.drop_candidate(f"The candidate could not be loaded: {reason}")
        except DatabaseError:
            self.dropped.discard(read.release)  # try again at the next re-read
            connection.close()
            return
        if rollback:
            log.warning("candidate of %s release %s dropped: %s", read.name, release.number, reason)

    # --- loading -----------------------------------------------------------------------------

    def _request_load(self, version_id):
        if version_id in self.loading or self.failures.waiting(version_id, time.monotonic()):
            return
        self.loading.add(version_id)
        self.load_queue.put(version_id)

    def _loader_loop(self):
        while not self.stopping.is_set():
            try:
                version_id = self.load_queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._load(version_id)
            finally:
                self.loading.discard(version_id)
                self.wake()

    def _load(self, version_id):
        from lifecycle.registry.models import ModelVersion

        try:
            model = loaded.load(version_id)
        except loaded.LoadFailed as exc:
            log.error("version %s cannot be served: %s", version_id, exc)
            self.failures.add(version_id, str(exc))
            return
        except ModelVersion.DoesNotExist:
            return
        except DatabaseError as exc:
            self.failures.add(version_id, str(exc), retry_at=time.monotonic() + LOAD_RETRY_SECONDS)
            connection.close()
            return
        future = asyncio.run_coroutine_threadsafe(self._attach_batcher(model), self.loop)
        future.result()
        keep = set().union(*(r.versions for r in self.read.values()), *(r.versions for r in self.applied.values()))
        for evicted in self.cache.add(model, keep):
            log.info("unloaded %r (memory budget)", evicted)
            self.loop.call_soon_threadsafe(evicted.batcher.close)

    async def _attach_batcher(self, model):
        model.batcher = Batcher(model, max_batch=settings.SERVING_MAX_BATCH,
                                wait_seconds=settings.SERVING_BATCH_WAIT_MS / 1000.0,
                                max_queue=settings.SERVING_MAX_QUEUE)

    # --- notices and heartbeat ---------------------------------------------------------------

    def _notices_loop(self):
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=5,
                                      health_check_interval=10)
        while not self.stopping.is_set():
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(notices.CHANNEL)
                if not self.notices_ok:
                    log.info("route notices subscribed")
                self.notices_ok = True
                self.wake()  # notices sent while we were not listening are lost: re-read now
                while not self.stopping.is_set():
                    if pubsub.get_message(timeout=1.0):
                        self.wake()
            except (redis.RedisError, OSError) as exc:
                if self.notices_ok:
                    log.warning("route notices lost (%s); re-reading routes every %s s", exc.__class__.__name__,
                                settings.SERVING_ROUTES_REFRESH_SECONDS)
                self.notices_ok = False
                self.stopping.wait(NOTICE_RECONNECT_SECONDS)
            finally:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass

    def _heartbeat_loop(self):
        while not self.stopping.is_set():
            try:
                self.beat()
            except DatabaseError as exc:
                self._trouble("heartbeat", f"heartbeat not written ({exc.__class__.__name__})")
                connection.close()
            except Exception:  # noqa: BLE001
                log.exception("heartbeat not written")
            else:
                self._trouble("heartbeat", None)
            self.stopping.wait(HEARTBEAT_SECONDS)

    def beat(self):
        from lifecycle.deployments.models import ServingProcess, ServingToken

        ServingProcess.beat(self.process_id, host=self.host, pid=self.pid, port=self.port,
                            started_at=self.started_at, loaded=self.cache.summary(), notices_ok=self.notices_ok)
        used, self.used_tokens = self.used_tokens, set()
        if used:
            ServingToken.objects.filter(pk__in=used).update(last_used_at=timezone.now())

    # --- what requests ask ------------------------------------------------------------------

    @property
    def ready(self):
        """Every deployment serves its current generation, or is known not to be servable."""
        return self.routes_read and all(
            name in self.unavailable or (name in self.applied and not self.applied[name].interim
                                         and self.applied[name].generation == read.generation)
            for name, read in self.read.items())

    def authenticate(self, header):
        """The token row for an Authorization header, or 401."""
        from lifecycle.deployments.models import ServingToken

        if not self.routes_read:  # no token or deployment is known yet: say so, not 401 or 404
            raise errors.unavailable("starting", "The serving process is starting (its routes are not read yet).")
        scheme, _, key = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise errors.unauthorized('Send a serving token as "Authorization: Bearer <token>".')
        token = self.tokens.get(ServingToken.hash_key(key.strip()))
        if token is None:
            raise errors.unauthorized("This token is not valid (unknown or revoked).")
        return token

    def deployment(self, name, token):
        """The deployment's read route, after the token's scope: 404 unknown, 403 not its token's."""
        read = self.read.get(name)
        if read is None:
            raise errors.not_found(f"No deployment is called {name!r}.")
        if read.deployment not in token["deployments"]:
            raise errors.forbidden(f"This token is not for the deployment {name}.")
        return read

    def serving(self, name):
        """What serves `name` now, or 503 with the reason."""
        if name in self.unavailable:
            raise errors.unavailable("unavailable", f"{name} cannot answer: {self.unavailable[name]}", retry_after=30)
        route = self.applied.get(name)
        if route is None:
            raise errors.unavailable("loading", f"{name}'s model is still loading; try again in a moment.")
        return route

    async def limit(self, token):
        self.used_tokens.add(token["id"])
        wait = await self.limiter.check(token)
        if wait is not None:
            raise errors.rate_limited(wait)

    def stable_model(self, name):
        route = self.applied.get(name)
        return self.cache.get(route.stable) if route else None

    async def predict(self, route, texts, key, started):
        """Answer `texts` on `route` (a shadow's candidate answers a copy on the side), log
        every input; raises ServingError for overload (503) or a failed forward pass (500)."""
        side = routes.side_for(route, key, routing.choose)
        model = self.cache.get(route.candidate if side == routing.CANARY else route.stable)
        if model is None or model.batcher is None:
            raise errors.unavailable("loading", f"{route.name}'s model is still loading; try again in a moment.")
        request_id = uuid.uuid4()
        shadow = self._start_shadow(route, texts, request_id, started)
        try:
            outputs = await model.batcher.submit(texts)
        except Overloaded as exc:
            if shadow:
                shadow.cancel()
            refused = errors.unavailable("overloaded", f"{route.name} is overloaded ({exc}); retry shortly.")
            refused.route = side
            raise refused from None
        except Exception as exc:  # noqa: BLE001 - the failed pass is logged, then answered 500
            self._record(route, model, side, request_id, texts, None, started, error=exc)
            raise errors.ServingError(500, "prediction_failed", f"The model failed on this request: {exc}",
                                      route=side) from None
        self._record(route, model, side, request_id, texts, outputs, started)
        return Answer(request_id, route, side, model, outputs)

    def _start_shadow(self, route, texts, request_id, started):
        if route.mode != routes.SHADOW or not route.candidate:
            return None
        model = self.cache.get(route.candidate)
        if model is None or model.batcher is None:
            return None
        task = asyncio.create_task(self._shadow(route, model, texts, request_id, started))
        self.shadows.add(task)
        task.add_done_callback(self.shadows.discard)
        return task

    async def _shadow(self, route, model, texts, request_id, started):
        """The candidate's answer to a copy: logged with route "shadow", never returned."""
        try:
            outputs = await model.batcher.submit(texts)
        except Overloaded:
            metrics.REQUESTS.labels(deployment=route.name, route=routes.SHADOW, status="overloaded").inc()
            return
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001
            self._record(route, model, routes.SHADOW, request_id, texts, None, started, error=exc)
            metrics.REQUESTS.labels(deployment=route.name, route=routes.SHADOW, status="error").inc()
            return
        self._record(route, model, routes.SHADOW, request_id, texts, outputs, started)
        metrics.REQUESTS.labels(deployment=route.name, route=routes.SHADOW, status="ok").inc()
        metrics.DURATION.labels(deployment=route.name, route=routes.SHADOW).observe(time.perf_counter() - started)

    def _record(self, route, model, side, request_id, texts, outputs, started, error=None):
        latency_ms = (time.perf_counter() - started) * 1000.0
        now = timezone.now()
        rows = []
        for position, text in enumerate(texts):
            answer = outputs[position] if outputs else {}
            output = {k: answer[k] for k in ("label", "probabilities", "text") if k in answer}
            rows.append({
                "request_id": request_id, "position": position, "deployment_id": route.deployment,
                "release_id": route.release, "version_id": model.info.id, "route": side, "input_text": text,
                "output": output, "label": answer.get("label", ""), "confidence": answer.get("confidence"),
                "latency_ms": round(latency_ms, 3), "status": "error" if error else "ok",
                "error": f"{type(error).__name__}: {error}"[:300] if error else "",
                "text_length": len(text), "token_count": answer.get("token_count", 0),
                "embedding": answer.get("embedding", []), "process": self.process_id, "created_at": now})
        self.recorder.record(rows, model.info.pii_policy)

    async def feedback(self, token, request_id, position, label, correct, note):
        return await self.loop.run_in_executor(self.orm, self._feedback, token, request_id, position, label,
                                               correct, note)

    def _feedback(self, token, request_id, position, label, correct, note):
        from lifecycle.deployments.models import DeploymentError, Feedback, PredictionLog, Route, ServingToken

        def answered():
            return (PredictionLog.objects.filter(request_id=request_id, position=position)
                    .exclude(route=Route.SHADOW).values_list("deployment_id", flat=True).first())

        try:
            deployment_id = answered()
            if deployment_id is None:
                # The prediction may still be on its way: being masked, or in the buffer.
                self.recorder.flush()
                self.buffer.flush()
                deployment_id = answered()
            if deployment_id is None:
                raise errors.not_found("No prediction with that request id (and position) is in the log.")
            if deployment_id not in token["deployments"]:
                raise errors.forbidden("That prediction belongs to a deployment this token is not for.")
            try:
                return Feedback.give(request_id=request_id, position=position, label=label, correct=correct,
                                     note=note, token=ServingToken.objects.get(pk=token["id"]))
            except (DeploymentError, ServingToken.DoesNotExist) as exc:
                raise errors.unprocessable("invalid_feedback", str(exc)) from None
        except DatabaseError:
            connection.close()
            raise errors.unavailable("database_unavailable", "Feedback cannot be stored right now; try again.") from None
