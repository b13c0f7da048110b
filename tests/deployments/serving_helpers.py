"""A real serving process for tests (`manage.py serve` in a subprocess on a free port, on the
test database, artifact store and model cache) and a plain HTTP client for it (http.client:
what any client of the API would send, no test client in between)."""
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from tests.workers import ROOT, output, stop, wait_for, worker_env

# Fast enough for tests to wait on: flushes and re-reads well inside the 2 s pick-up.
TEST_ENV = {"SERVING_LOG_FLUSH_SECONDS": "0.2", "SERVING_MEMORY_BUDGET_MB": "1200", "LOG_LEVEL": "INFO"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serving(tmp_path, env=None, *, args=(), ready=True, timeout=120):
    """A serving process (`args`: more options for `manage.py serve`); returns the Popen with
    `.url` and `.port`. With `ready`, waits until /v2/health/ready says 200 (every deployment's
    current release is loaded)."""
    port = free_port()
    spool = Path(tmp_path) / f"spool-{port}"
    full_env = {**TEST_ENV, "MODEL_CACHE_DIR": str(settings.MODEL_CACHE_DIR), "SERVING_SPOOL_DIR": str(spool),
                **(env or {})}
    process = _start_manage(tmp_path, "serve", "--port", str(port), *args, env=full_env)
    process.port, process.url = port, f"http://127.0.0.1:{port}"
    if ready:
        wait_ready(process, timeout)
    return process


def _start_manage(log_dir, *args, env):
    """tests/workers.py's start_manage, except that `env` may replace what worker_env sets (a
    DATABASE_URL through a proxy that a test cuts)."""
    log = open(Path(log_dir) / f"{args[0]}-{time.monotonic_ns()}.log", "w+")
    process = subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env={**worker_env(), **env},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log
    return process


def database_url_via(port):
    """The test database's URL, reached through 127.0.0.1:`port` (a CuttableProxy)."""
    parts = urlsplit(worker_env()["DATABASE_URL"])
    auth = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{auth}@127.0.0.1:{port}").geturl()


def wait_ready(process, timeout=120):
    def is_ready():
        if process.poll() is not None:
            raise AssertionError(f"the serving process exited ({process.returncode}):\n{output(process)[-4000:]}")
        try:
            return Client(process.url).get("/v2/health/ready").status == 200
        except OSError:
            return False

    wait_for(is_ready, timeout, "the serving process to be ready")


def stop_serving(process):
    stop(process)


class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Reply {self.status} {self.body[:300]!r}>"


class Client:
    """One keep-alive HTTP/1.1 connection (not thread-safe: one per thread)."""

    def __init__(self, url, token=None, timeout=30):
        parts = urlsplit(url)
        self.host, self.port, self.token, self.timeout = parts.hostname, parts.port, token, timeout
        self.conn = None

    def request(self, method, path, *, json_body=None, raw=None, token=None, headers=None):
        body = raw if raw is not None else (json.dumps(json_body).encode() if json_body is not None else None)
        sent = {"Content-Type": "application/json", **(headers or {})}
        token = token if token is not None else self.token
        if token:
            sent["Authorization"] = f"Bearer {token}"
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=sent)
                response = self.conn.getresponse()
                reply = Reply(response.status, dict(response.getheaders()), response.read())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # the server closed an idle keep-alive connection: once more on a new one
                if attempt == 2:
                    raise
                continue
            if response.getheader("connection", "").lower() == "close":
                self.close()
            return reply

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, body=None, **kwargs):
        return self.request("POST", path, json_body=body, **kwargs)

    def predict(self, deployment, inputs, key=None, **kwargs):
        body = {"inputs": inputs, **({"key": key} if key is not None else {})}
        return self.post(f"/v1/deployments/{deployment}/predict", body, **kwargs)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_applied(deployment, generation=None, timeout=60):
    """Until some live serving process reports `deployment` at `generation` (default: its
    current one) as applied."""
    from lifecycle.deployments.models import Deployment, RouteAck

    def applied():
        target = generation or Deployment.objects.get(pk=deployment.pk).generation
        return RouteAck.objects.filter(deployment_id=deployment.pk, generation__gte=target).exists()

    wait_for(applied, timeout, f"{deployment.name} to be applied by a serving process")


def wait_served(client, deployment, inputs=("hello",), timeout=60):
    """Until `deployment` answers 200 (its versions are loaded)."""
    last = {}

    def answered():
        last["reply"] = client.predict(deployment, list(inputs))
        return last["reply"].status == 200

    try:
        wait_for(answered, timeout, f"{deployment} to answer")
    except AssertionError:
        raise AssertionError(f"{deployment} never answered 200; last: {last.get('reply')}") from None
    return last["reply"]



class CuttableProxy:
    """A TCP proxy to `upstream` on a port of its own that a test can cut (every connection
    closed, new ones refused) and restore: a database that is unreachable for a moment."""

    def __init__(self, upstream_host, upstream_port):
        import threading

        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.lock, self.sockets, self.listener = threading.Lock(), set(), None
        self.restore()

    def restore(self):
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self):
        with self.lock:
            listener, self.listener = self.listener, None
            sockets, self.sockets = self.sockets, set()
        listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, listener):
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.listener is not listener:
                    client.close()
                    server.close()
                    return
                self.sockets |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
