"""A TCP proxy in front of the test PostgreSQL that a test can cut and restore: the database
"unreachable for a moment" without touching the real server.

    with PgProxy() as proxy:          # listens on 127.0.0.1:proxy.port
        ...                           # point a database alias or a subprocess at proxy.port
        proxy.cut()                   # every connection closed, new ones refused (reset)
        proxy.restore()
        proxy.cut_after(100_000)      # cut once 100 kB more went from clients to the server

`cut_after` makes "the connection dropped half-way through a write" deterministic: the last
piece is forwarded only up to the budget, so the server sees a protocol message cut short.
"""
import socket
import struct
import threading


class PgProxy:
    def __init__(self, upstream=("127.0.0.1", 5432)):
        self.upstream = upstream
        self._lock = threading.Lock()
        self._sockets = set()
        self._cut = False
        self._budget = None  # bytes clients may still send before the cut
        self.connections = 0  # accepted and forwarded, for a test to see reconnects
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)  # the accept loop notices close() within this
        self.port = self._listener.getsockname()[1]
        self._open = True
        self._acceptor = threading.Thread(target=self._accept_loop, name="pgproxy-accept", daemon=True)
        self._acceptor.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def is_cut(self):
        return self._cut

    def cut(self):
        """Close every connection and refuse new ones until restore()."""
        with self._lock:
            self._cut = True
            self._budget = None
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _reset(sock)

    def restore(self):
        with self._lock:
            self._cut = False
            self._budget = None

    def cut_after(self, nbytes):
        """Forward `nbytes` more from clients to the server, then cut."""
        with self._lock:
            self._cut = False
            self._budget = nbytes

    def close(self):
        self._open = False
        self.cut()
        self._acceptor.join(5)
        self._listener.close()

    # --- forwarding -----------------------------------------------------------------------------

    def _accept_loop(self):
        while self._open:
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._cut or not self._open:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._cut:
                    _reset(client), _reset(server)
                    continue
                self._sockets.update((client, server))
                self.connections += 1
            for src, dst, metered in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, metered), daemon=True,
                                 name="pgproxy-pump").start()

    def _pump(self, src, dst, metered):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if metered and not self._spend(dst, data):
                    self.cut()
                    return
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with self._lock:
                self._sockets.discard(sock)
            _reset(sock)

    def _spend(self, dst, data):
        """Forward within the budget; False once it is spent (the part that fits is sent)."""
        with self._lock:
            if self._budget is None:
                return True
            if len(data) < self._budget:
                self._budget -= len(data)
                return True
            part, self._budget = data[:self._budget], 0
        try:
            dst.sendall(part)
        except OSError:
            pass
        return False


def _reset(sock):
    """Drop a connection at once. shutdown() first: a close() alone does not wake the pump
    thread blocked in recv() on it; no linger, so nothing waits on a FIN handshake."""
    for step in (lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                 lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            step()
        except OSError:
            pass
