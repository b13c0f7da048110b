"""A webhook receiver for tests: an HTTP server on 127.0.0.1 (a free port) in a thread of the
test process. It records every request, verifies its signature with the `standardwebhooks`
package (once the test tells it the secret) and answers from `statuses` in turn (the last
one repeats); a request whose signature does not verify gets 401, as a real receiver's would.
With `tls` (a server-side ssl.SSLContext) it speaks https."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks


class Receiver:
    def __init__(self, statuses=(200,), secret=None, location=None, tls=None):
        self.statuses = list(statuses)
        self.secret = secret
        self.location = location  # sent as Location (to test that redirects are not followed)
        self.requests = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        if tls:  # an ssl.SSLContext for the server side
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()

    def url(self, host="127.0.0.1", path="/hooks/lifecycle?source=registry"):
        return f"{self.scheme}://{host}:{self.port}{path}"

    def _answer(self, request):
        with self._lock:
            self.requests.append(request)
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return 401 if request["verified"] is False else status

    def _verify(self, body, headers):
        if self.secret is None:
            return None
        try:
            standardwebhooks.Webhook(self.secret).verify(body, headers)
        except standardwebhooks.WebhookVerificationError:
            return False
        return True

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                request = {"path": self.path, "headers": headers, "body": body,
                           "verified": receiver._verify(body, headers)}
                status = receiver._answer(request)
                self.send_response(status)
                if receiver.location and 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        return Handler
