"""Container health check: GET /healthz on the local gunicorn (the web process), or the path and
port given on the command line (the serving process: `healthcheck.py /v2/health/ready 8100`).

    python /app/docker/healthcheck.py [PATH [PORT]]

Uses only the standard library (the images have no curl). Exit 0 when the path answers 200
(web: database and Redis reachable; serving: ready to take traffic), 1 otherwise; Docker keeps
the printed line in `docker inspect`'s health log.

With DEBUG off Django answers 400 to a Host header that is not in ALLOWED_HOSTS, so the
request names the first concrete entry of ALLOWED_HOSTS ("localhost" when there is none or
when the list allows every host). /healthz is exempt from the HTTPS redirect
(SECURE_REDIRECT_EXEMPT), so plain HTTP on the container port is enough.
"""
import os
import sys
import urllib.error
import urllib.request

PORT = os.environ.get("HEALTHCHECK_PORT", "8000")
PATH = "/healthz"
TIMEOUT_SECONDS = 5


def host_header():
    for entry in os.environ.get("ALLOWED_HOSTS", "").split(","):
        entry = entry.strip()
        if not entry or "*" in entry:
            continue
        # ".example.com" allows example.com and its subdomains.
        return entry.lstrip(".")
    return "localhost"


def one_line(raw):
    return " ".join(raw.decode("utf-8", "replace").split())[:300]


def target(argv):
    """(path, port) from the command line, defaulting to web's /healthz."""
    path = argv[0] if argv else PATH
    port = argv[1] if len(argv) > 1 else PORT
    if not path.startswith("/") or not port.isdigit():
        raise SystemExit(f"usage: healthcheck.py [PATH [PORT]] (PATH starts with /, PORT is a number), not {argv}")
    return path, port


def main(argv=()):
    path, port = target(list(argv))
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": host_header(), "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            print(response.status, one_line(response.read(1000)))
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(exc.code, one_line(exc.read(1000)))
    except (urllib.error.URLError, OSError) as exc:
        print("unreachable:", getattr(exc, "reason", exc))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
