"""The JSON APIs' common frame (registry/api.py, deployments/api.py): one error shape,
{"error", "detail"}, the allowed methods, and bodies whose unknown fields are refused.

Each API names its own refusals, most specific first: (exception class, status, code) and
optionally a function of the exception giving more fields of the answer."""
from functools import wraps

from django.http import JsonResponse

from lifecycle.lib import jsonbody
from lifecycle.lib.params import BadParameter


class NotFound(Exception):
    pass


class BadRequest(Exception):
    pass


def error(status, code, detail, **extra):
    return JsonResponse({"error": code, "detail": detail, **extra}, status=status)


BASE_REFUSALS = ((jsonbody.JsonBodyError, None, None), (BadRequest, 400, "bad_request"),
                 (BadParameter, 400, "bad_request"), (NotFound, 404, "not_found"))


def api_view(refusals):
    """A decorator factory `api(*methods)` for views that answer every refusal in the shape."""
    table = (*BASE_REFUSALS, *refusals)

    def api(*methods):
        def decorator(view):
            @wraps(view)
            def wrapper(request, *args, **kwargs):
                if request.method not in methods:
                    response = error(405, "method_not_allowed", f"use {' or '.join(methods)}")
                    response["Allow"] = ", ".join(methods)
                    return response
                try:
                    return view(request, *args, **kwargs)
                except tuple(entry[0] for entry in table) as exc:
                    return _refusal(table, exc)

            return wrapper

        return decorator

    return api


def _refusal(table, exc):
    for kind, status, code, *extra in table:
        if isinstance(exc, kind):
            if status is None:  # it carries its own answer
                return exc.response()
            return error(status, code, str(exc), **(extra[0](exc) if extra else {}))
    raise exc


def body(request, allowed, required=()):
    """The request's JSON object, refused when it has a field not in `allowed` or lacks one in `required`."""
    data = jsonbody.read_object(request)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; this takes {', '.join(allowed)}")
    missing = [name for name in required if name not in data]
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}")
    return data
