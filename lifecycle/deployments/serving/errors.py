"""Every refusal the serving API gives, in one shape.

Our own API answers `{"error": {"code": "...", "message": "..."}}`; the Open Inference Protocol's
routes (/v2/...) answer `{"error": "message"}` as that protocol says. The status and the
metrics status go together: a 4xx is "rejected", 429 "rate_limited", 503 "overloaded".
"""
from fastapi.responses import JSONResponse


class ServingError(Exception):
    def __init__(self, status, code, message, *, headers=None, route="none"):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.route = route  # the side it was on, for the metrics ("none": refused before routing)

    @property
    def metric_status(self):
        if self.status == 429:
            return "rate_limited"
        if self.status == 503:
            return "overloaded"
        return "rejected" if self.status < 500 else "error"


def oip_path(path):
    return path == "/v2" or path.startswith("/v2/")


def error_response(path, status, code, message, headers=None):
    if oip_path(path):
        # The protocol answers a request it cannot take with 400 where our own API says 422.
        return JSONResponse({"error": message}, status_code=400 if status == 422 else status, headers=headers)
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def from_exception(path, exc):
    return error_response(path, exc.status, exc.code, exc.message, exc.headers)


def bad_request(code, message):
    return ServingError(400, code, message)


def unprocessable(code, message):
    return ServingError(422, code, message)


def too_large(code, message):
    return ServingError(413, code, message)


def unauthorized(message):
    return ServingError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message):
    return ServingError(403, "forbidden", message)


def not_found(message):
    return ServingError(404, "not_found", message)


def rate_limited(retry_after):
    return ServingError(429, "rate_limited", f"This token's rate limit is used up; retry in {retry_after} s.",
                        headers={"Retry-After": str(retry_after)})


def unavailable(code, message, retry_after=1):
    return ServingError(503, code, message, headers={"Retry-After": str(retry_after)})
