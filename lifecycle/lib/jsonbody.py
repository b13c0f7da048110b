"""The one reader of JSON request bodies for the JSON APIs.

Python's json module takes what the rest of the stack cannot: nesting deep enough to exhaust
the interpreter's recursion limit, 1e400 (read as inf), NaN and Infinity (not JSON at all),
and "\\ud800" (a lone surrogate, which no UTF-8 encoder writes back). The body's size and
nesting are checked on the raw bytes before parsing, the rest while parsing, and every
refusal is a JsonBodyError that answers 400 (413 for size) in the API's error shape.
"""
import json
import re
from itertools import accumulate

from django.conf import settings
from django.http import JsonResponse

# Strings are removed before brackets are counted, so "[[[" inside text does not count.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonBodyError(ValueError):
    def __init__(self, detail, status=400, error="invalid JSON body"):
        super().__init__(detail)
        self.detail, self.status, self.error = detail, status, error

    def response(self, **extra):
        return JsonResponse({"error": self.error, "detail": self.detail, **extra}, status=self.status)


def read_object(request, what="a JSON object"):
    """The request's body as a dict; JsonBodyError for anything else."""
    value = read(request, empty=None)
    if not isinstance(value, dict):
        raise JsonBodyError(f"the body must be {what}")
    return value


def read(request, **empty):
    """The request's body parsed as JSON, within JSON_BODY_MAX_BYTES and JSON_BODY_MAX_DEPTH.
    An empty body is refused, unless `empty=` says what it stands for."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isascii() and declared.isdigit() and int(declared) > settings.JSON_BODY_MAX_BYTES:
        raise _too_large()
    body = request.body
    if len(body) > settings.JSON_BODY_MAX_BYTES:
        raise _too_large()
    if not body and "empty" in empty:
        return empty["empty"]
    return parse(body, max_depth=settings.JSON_BODY_MAX_DEPTH)


def _too_large():
    return JsonBodyError(f"the body is larger than {settings.JSON_BODY_MAX_BYTES} bytes", 413, "body too large")


def parse(body, *, max_depth):
    """JSON from bytes: UTF-8, nested at most `max_depth` deep, finite numbers, storable strings."""
    if nesting_depth(body) > max_depth:
        raise JsonBodyError(f"the body is nested more than {max_depth} levels deep")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonBodyError("the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except JsonBodyError:
        raise
    except ValueError as exc:
        raise JsonBodyError(f"the body is not valid JSON: {exc}") from None
    _check_strings(value)
    return value


def nesting_depth(body):
    """The deepest bracket nesting outside strings; a loop in C, never a recursion."""
    brackets = _STRING.sub(b'""', body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _no_constant(name):
    raise JsonBodyError(f"{name} is not a JSON number; send a finite number or null")


def _finite_float(text):
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise JsonBodyError(f"the number {text[:40]} is too large")
    return number


def _check_strings(value):
    """Refuse text PostgreSQL cannot store: lone surrogates (no UTF-8 for them) and NUL."""
    todo = [value]
    while todo:  # depth is capped already; a loop all the same
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, str):
            _check_text(item)


def _check_text(text):
    if "\x00" in text:
        raise JsonBodyError("text in the body may not contain NUL (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonBodyError("text in the body holds a lone surrogate (an unpaired \\ud800-\\udfff escape)") from None
