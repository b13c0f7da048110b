"""Odd input never makes a 500. Every routed view gets, for every query, form and JSON name
its code reads, a fixed set of hostile values (non-ASCII digits, huge numbers, NaN, infinities,
deep nesting, lone surrogates, NUL, empty, very long), hostile path values and whole hostile
bodies, sent as a superuser (who passes every role check). The names are read from the code,
not listed here, so a new route is walked as soon as it is routed."""
import dataclasses
import inspect
import json
import re
import types
from urllib.parse import quote

import pytest
from django import forms
from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.test import override_settings
from django.urls import URLPattern, URLResolver, get_resolver

from lifecycle.core.models import ApiToken, Job
from lifecycle.datasets import uploads
from lifecycle.lib.params import BadParameter, parse_float, parse_id, parse_ids, parse_int
from lifecycle.runs.config import ConfigError, RunConfig
from tests.conftest import make_user
from tests.labeling.factories import labeled_version, make_project
from tests.runs.test_web import make_run

# Logging out mid-walk would turn every later request into a redirect to the login page.
SKIPPED = {"logout"}

# Query and form values, as text; sent percent-encoded from their UTF-8 bytes, so that a lone
# surrogate travels as the bytes a careless client would send.
HOSTILE_TEXT = [
    "²", "١٢", "99999999999999999999999", "-99999999999999999999999", "1.0e400", "NaN", "inf", "-1", "0",
    "", "x" * 5000, "\x00", "\ud800", "1,²", "99999999999999999999999,1",
]
# JSON member values, as raw JSON text (so that 1e400 and NaN arrive as the literals they are).
HOSTILE_JSON = [
    '"²"', "1e400", "-1e400", "1" + "0" * 30, "-1" + "0" * 30, "NaN", "Infinity", '"NaN"', '"1.0e400"',
    '""', json.dumps("x" * 5000), '"\\ud800"', '"\\u0000"', "[" * 5000 + "]" * 5000, "{}", "[1]", "true", "null",
    "-1", "0", "1.5",
]
# Whole bodies, each sent as JSON, as form data and as (boundary-less) multipart.
HOSTILE_BODIES = [
    b"[" * 100_000, b'{"a":' * 100_000, b"1e400", b"9" * 5000, b"\xff\xfe\xfd", b'"\\ud800"', b'{"name": "\\ud800"}',
    b'{"a": NaN}', b'["a"]', b"", b"null", b"{}", b"=&=&&", b"a=%ED%A0%80&b=%FF",
]
BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
# Path values by converter: huge and zero ids, non-ASCII, NUL and a lone surrogate's bytes.
HOSTILE_PATH = {"int": ["99999999999999999999999", "0"], "str": ["²", "%00", "%ED%A0%80"], "path": ["²", "%00"],
                "slug": ["x" * 300]}

NAME_PATTERNS = [
    re.compile(r"""request\.(?:GET|POST|FILES)\.(?:get|getlist|pop)\(\s*["'](\w+)["']"""),
    re.compile(r"""request\.(?:GET|POST|FILES)\[\s*["'](\w+)["']\s*\]"""),
    re.compile(r"""\bdata\.(?:get|pop)\(\s*["'](\w+)["']"""),
    re.compile(r"""\bdata\[\s*["'](\w+)["']\s*\]"""),
]
UPLOAD = ("rows.jsonl", b'{"text": "hello there", "label": "billing"}\n' * 3)


# --- what the code reads ---------------------------------------------------------------------


def walk(patterns, prefix="", namespace=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if pattern.app_name != "admin":  # the admin is Django's own
                inner = f"{pattern.namespace}:" if pattern.namespace else namespace
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), namespace + (pattern.name or ""), pattern


ROUTES = [(route, name, pattern) for route, name, pattern in walk(get_resolver().url_patterns) if name not in SKIPPED]


def view_closure(callback):
    """The view function (or class) and every function of its module that it reaches by name."""
    view = getattr(callback, "view_class", None) or inspect.unwrap(callback)
    module = inspect.getmodule(view)
    seen, todo = {}, [view]
    while todo:
        func = todo.pop()
        if func.__name__ in seen:
            continue
        seen[func.__name__] = func
        for word in set(re.findall(r"\w+", inspect.getsource(func))):
            value = getattr(module, word, None)
            if isinstance(value, types.FunctionType) and inspect.getmodule(value) is module:
                todo.append(inspect.unwrap(value))
    return module, [inspect.getsource(func) for func in seen.values()]


@dataclasses.dataclass
class Reads:
    by_hand: list  # names the code takes out of the request itself, one after another
    forms: list  # form classes it names: each field is cleaned (or shown) on its own
    bound: dict  # "get"/"post" → the form classes bound to that method's data
    json_fields: list  # members of a JSON body (the fields of the dataclasses its module imports)
    json: bool


def reads(callback):
    module, sources = view_closure(callback)
    by_hand = {name for source in sources for pattern in NAME_PATTERNS for name in pattern.findall(source)}
    words = {word for source in sources for word in re.findall(r"\w+", source)}
    form_classes = [value for word in sorted(words) if isinstance(value := getattr(module, word, None), type)
                    and issubclass(value, forms.BaseForm)]
    form_classes += [callback.view_class.form_class] if hasattr(getattr(callback, "view_class", None), "form_class") else []
    bound = {method: [form_class for form_class in form_classes if any(
        re.search(rf"\b{form_class.__name__}\(\s*request\.{method.upper()}\b", source) for source in sources)]
        for method in ("get", "post")}
    if hasattr(callback, "view_class"):
        bound["post"] = form_classes  # a class-based form view binds its form to the POST data
    is_json = any("request.body" in source or "jsonbody" in source for source in sources)
    json_fields = sorted({f.name for value in vars(module).values() if isinstance(value, type)
                          and dataclasses.is_dataclass(value) for f in dataclasses.fields(value)}) if is_json else []
    return Reads(sorted(by_hand), form_classes, bound, json_fields, is_json)


def make_form(form_class, seeded, data=None):
    """The form as a view makes it: keyword arguments it requires come from the seeded objects."""
    wanted = [p.name for p in inspect.signature(form_class.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY]
    try:
        return form_class(data, **{name: seeded.form_kwargs[name] for name in wanted if name in seeded.form_kwargs})
    except (TypeError, AttributeError):  # it takes something else (a QueryDict): cannot tell
        return None


def accepts(form_class, seeded, name, value):
    """Whether the form lets `value` through for `name` on its own; None when it cannot tell.
    Only then can the value reach code beyond the form, so only then is a request of its own
    worth sending: a refusal was already exercised by the request with every field set."""
    form = make_form(form_class, seeded, {name: value})
    if form is None:
        return None
    form.is_valid()
    return name not in form.errors


# --- seeded objects, so that id routes resolve and the deeper code runs ------------------------


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker, tmp_path_factory):
    """Made once for the module inside a transaction rolled back at its end; each test runs in
    a savepoint within it, so what a test's requests change is undone for the next route."""
    tmp = tmp_path_factory.mktemp("hostile")
    with django_db_blocker.unblock(), override_settings(ARTIFACT_DIR=tmp / "artifacts"), transaction.atomic():
        yield _seed(tmp)
        transaction.set_rollback(True)


def _seed(tmp):
    admin = make_user("ada-admin", superuser=True)
    version = labeled_version(tmp, admin, n=24)
    project = make_project(version, admin, overlap=1, gold_share=0.1)
    run = make_run(version, user=admin)
    (tmp / UPLOAD[0]).write_bytes(UPLOAD[1])
    upload = uploads.receive(version.dataset, str(tmp / UPLOAD[0]), UPLOAD[0], user=admin, on_error="reject")
    token, _ = ApiToken.issue(admin, "walk")
    values = {"job_id": run.job_id, "run_id": run.pk, "project_id": project.pk, "item_id": project.items.first().pk,
              "upload_id": upload.pk, "token_id": token.pk, "slug": version.dataset.slug, "number": version.number,
              "operation": "resplit", "fmt": "csv", "sha256": "0" * 64, "rest": "v1/below",
              # No registry objects (a version needs a trained, signed output): these routes
              # answer 404 to every walk, which must still never be a 500.
              "request_id": 1, "webhook_id": 1, "name": "nowhere", "rollback_id": 1,
              # Monitoring's rows hang off deployments (none here): 404s as well.
              "pk": 1, "version_id": 1, "feature": "text_length"}
    config = {"dataset_version": version.pk, "base_model": run.base_model, "epochs": 1, "max_length": 64}
    bases = {"runs:api_create": config, "runs:create": config, "labeling:skip": {"item": values["item_id"]},
             "labeling:answer": {"item": values["item_id"], "label": project.label_set[0]},
             "labeling:decide": {"label": project.label_set[0]}, "datasets:diff": {"a": version.number, "b": version.number},
             "datasets:upload_create": {"file": UPLOAD, "on_error": "reject"},
             "datasets:api_version_create": {"file": UPLOAD}, "jobs": {"before": Job.objects.order_by("-pk")[0].pk + 1}}
    form_kwargs = {"project": project, "dataset": version.dataset, "columns": upload.columns,
                   "label_set": project.label_set}
    return types.SimpleNamespace(admin=admin, values=values, bases=bases, form_kwargs=form_kwargs)


def concrete(route, values, override=None):
    def fill(match):
        if override and match.group(2) == override[0]:
            return override[1]
        return str(values[match.group(2)])

    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>", fill, route)


# --- sending ---------------------------------------------------------------------------------


def _bytes(value):
    return str(value).encode("utf-8", "surrogatepass")


def encode_query(data):
    return "&".join(f"{quote(k)}={quote(_bytes(v))}" for k, v in data.items() if not isinstance(v, tuple))


def encode_multipart(data, boundary="hostile-boundary"):
    parts = []
    for key, value in data.items():
        if isinstance(value, tuple):  # (filename, content)
            head = f'Content-Disposition: form-data; name="{key}"; filename="{value[0]}"\r\n' \
                   "Content-Type: application/octet-stream"
            parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + value[1] + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
                         + _bytes(value) + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def encode_json(base, name, raw):
    members = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in base.items() if k != name]
    return _bytes("{" + ", ".join(members + [f"{json.dumps(name)}: {raw}"]) + "}")


class Walker:
    def __init__(self, client):
        self.client, self.failures, self.sent = client, [], 0

    def send(self, method, url, data=None, *, body=None, content_type=None, what=""):
        self.sent += 1
        try:
            response = self._request(method, url, data or {}, body, content_type)
            if getattr(response, "streaming", False):
                b"".join(response.streaming_content)  # a streamed export fails while it streams
        except RequestDataTooBig:
            return None  # Django's own cap: its handler answers 400 outside the test client
        except Exception as exc:
            self.failures.append(f"{method.upper()} {url} {what}: {type(exc).__name__}: {str(exc)[:160]}")
            return None
        if response.status_code >= 500:
            self.failures.append(f"{method.upper()} {url} {what}: {response.status_code}")
        return response

    def _request(self, method, url, data, body, content_type):
        if method == "get":
            return self.client.get(url, QUERY_STRING=encode_query(data))
        if body is None and any(isinstance(v, tuple) for v in data.values()):
            body, content_type = encode_multipart(data)
        elif body is None:
            body = encode_query(data).encode()
        return self.client.generic("POST", url, body, content_type=content_type or "application/x-www-form-urlencoded")

    def methods(self, url, base):
        """GET and/or POST: whichever the view does not answer 405."""
        answered = {method: self.send(method, url, base, what="(base)") for method in ("get", "post")}
        return [method for method, response in answered.items() if response is None or response.status_code != 405]


def send_fields(walker, method, url, base, found, seeded):
    for value in HOSTILE_TEXT:
        shown = f"{value[:20]!r}"
        if found.forms:  # every form field at once: each is cleaned on its own
            names = {name for form_class in found.forms for name in make_form_fields(form_class, seeded)}
            walker.send(method, url, {**base, **dict.fromkeys(names, value)}, what=f"every form field={shown}")
        for name in found.by_hand:
            walker.send(method, url, {**base, name: value}, what=f"{name}={shown}")
        for form_class in found.bound[method]:
            for name in make_form_fields(form_class, seeded):
                if name not in found.by_hand and accepts(form_class, seeded, name, value) is not False:
                    walker.send(method, url, {**base, name: value}, what=f"{name}={shown}")


def make_form_fields(form_class, seeded):
    form = make_form(form_class, seeded)
    return sorted(form.fields if form is not None else form_class.base_fields)


def send_json(walker, url, base, found):
    for name in sorted(set(found.json_fields) | set(found.by_hand)):
        for raw in HOSTILE_JSON:
            walker.send("post", url, body=encode_json(base, name, raw), content_type="application/json",
                        what=f"JSON {name}: {raw[:20]}")


def send_bodies(walker, url):
    for body in HOSTILE_BODIES:
        for content_type in BODY_TYPES:
            walker.send("post", url, body=body, content_type=content_type, what=f"body {body[:20]!r} as {content_type}")


def send_paths(walker, route, methods, seeded):
    for kind, part in re.findall(r"<(?:(\w+):)?(\w+)>", route):
        for value in HOSTILE_PATH.get(kind or "str", []):
            for method in methods:
                walker.send(method, concrete(route, seeded.values, override=(part, value)), what="(path)")


@pytest.mark.django_db
@pytest.mark.parametrize("route, name, pattern", ROUTES, ids=[name for _, name, _ in ROUTES])
def test_no_route_answers_500_to_hostile_input(client, seeded, redis, route, name, pattern):
    client.force_login(seeded.admin)
    walker, url, base = Walker(client), concrete(route, seeded.values), seeded.bases.get(name, {})
    methods = walker.methods(url, base)
    found = reads(pattern.callback)
    for method in methods:
        if method == "get" or not found.json:
            send_fields(walker, method, url, {k: v for k, v in base.items() if method == "post" or not isinstance(v, tuple)},
                        found, seeded)
    if "post" in methods:
        if found.json:
            send_json(walker, url, base, found)
        send_bodies(walker, url)
    send_paths(walker, route, methods, seeded)
    assert not walker.failures, f"{len(walker.failures)} of {walker.sent} requests failed:\n" + "\n".join(walker.failures[:40])


def test_the_walk_reads_the_names_from_the_code():
    """A guard against the patterns going stale: known reads are found."""
    by_name = {name: pattern.callback for _, name, pattern in ROUTES}
    assert "before" in reads(by_name["jobs"]).by_hand
    assert {"a", "b"} <= set(reads(by_name["datasets:diff"]).by_hand)
    assert {"on_error", "mapping", "split_by_time", "file"} <= set(reads(by_name["datasets:api_version_create"]).by_hand)
    assert "CompareForm" in [f.__name__ for f in reads(by_name["runs:compare"]).forms]
    create = reads(by_name["runs:create"])
    assert [f.__name__ for f in create.bound["post"]] == ["RunForm"] and not create.bound["get"]
    assert [f.__name__ for f in reads(by_name["runs:live"]).bound["get"]] == ["SinceForm"]
    api = reads(by_name["runs:api_create"])
    assert api.json and {"name", "max_steps", "learning_rate"} <= set(api.json_fields) | set(api.by_hand)


# --- the cases that were found, one by one -----------------------------------------------------


@pytest.fixture
def engineer_client(client, engineer):
    client.force_login(engineer)
    return client


def post_run(client, body):
    return client.generic("POST", "/api/v1/runs", body if isinstance(body, bytes) else _bytes(body),
                          content_type="application/json")


@pytest.mark.parametrize("before", ["²", "99999999999999999999999", "-3", "x"])
def test_jobs_page_refuses_a_bad_before_with_400(engineer_client, before):
    response = engineer_client.get("/jobs/", QUERY_STRING=encode_query({"before": before}))
    assert response.status_code == 400 and "before must be" in response.content.decode()


def test_jobs_page_still_pages_with_a_good_before(engineer_client):
    assert engineer_client.get("/jobs/", {"before": "5"}).status_code == 200


@pytest.mark.parametrize("runs", ["²,1", "99999999999999999999999,1", "١٢,1", "0,1"])
def test_compare_refuses_bad_run_ids_with_400(engineer_client, runs):
    response = engineer_client.get("/runs/compare", QUERY_STRING=encode_query({"runs": runs}))
    assert response.status_code == 400 and "is not an id" in response.content.decode()


@pytest.mark.parametrize("a, b", [("²", "1"), ("1", "99999999999999999999999"), ("١", "1")])
def test_version_diff_refuses_bad_numbers_with_400(client, db, tmp_path, a, b):
    client.force_login(make_user("erin", "ml_engineer"))
    version = labeled_version(tmp_path, None, n=12)
    response = client.get(f"/datasets/{version.dataset.slug}/diff", QUERY_STRING=encode_query({"a": a, "b": b}))
    assert response.status_code == 400 and "Choose two versions" in response.content.decode()


@pytest.mark.parametrize("value", ['"1.0e400"', "1e400", '"1e999"', "1" + "0" * 30])
def test_run_api_refuses_an_overflowing_max_steps_with_400(engineer_client, value):
    jobs_before = Job.objects.count()  # the walk's seeded jobs may be there too
    response = post_run(engineer_client, '{"max_steps": ' + value + "}")
    assert response.status_code == 400
    body = response.json()
    assert "max_steps" in body["errors"] or "too large" in body["detail"], body
    assert Job.objects.count() == jobs_before


@pytest.mark.parametrize("body, status, detail", [
    (b"[" * 100_000, 400, "nested more than 32 levels"),
    (b'{"a":' * 100_000, 400, "nested more than 32 levels"),
    (b'{"name": "\\ud800"}', 400, "lone surrogate"),
    (b'{"name": "a\\u0000b"}', 400, "NUL"),
    (b'{"epochs": NaN}', 400, "NaN is not a JSON number"),
    (b'{"epochs": -Infinity}', 400, "-Infinity is not a JSON number"),
    (b'{"name": "\xff"}', 400, "not UTF-8"),
    (b'["a"]', 400, "must be a JSON object"),
    (b'{"name": "' + b"x" * (1024 * 1024) + b'"}', 413, "larger than 1048576 bytes"),
])
def test_run_api_refuses_hostile_bodies_in_the_api_error_shape(engineer_client, body, status, detail):
    jobs_before = Job.objects.count()
    response = post_run(engineer_client, body)
    assert response.status_code == status
    assert detail in response.json()["detail"] and response.json()["error"]
    assert Job.objects.count() == jobs_before


def test_the_json_caps_are_settings(engineer_client, settings):
    settings.JSON_BODY_MAX_DEPTH = 2
    response = post_run(engineer_client, b'{"target_modules": [["query"]]}')
    assert response.status_code == 400 and "nested more than 2 levels" in response.json()["detail"]
    settings.JSON_BODY_MAX_BYTES = 10
    assert post_run(engineer_client, b'{"name": "longer than ten"}').status_code == 413


# --- the parsers on their own ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["²", "١٢", "0", "-1", "99999999999999999999999", str(2**63), "1.0", "", None, True, "1e3"])
def test_parse_id_takes_ascii_digits_within_bigint_only(value):
    with pytest.raises(BadParameter):
        parse_id(value)


def test_parse_id_and_ids_accept_good_ids():
    assert parse_id(" 42 ") == 42 and parse_id(2**63 - 1) == 2**63 - 1
    assert parse_ids("3, 1,3,,2") == [3, 1, 2] and parse_ids(["1,2", "4"]) == [1, 2, 4]
    with pytest.raises(BadParameter, match="at most 3 ids"):
        parse_ids("1,2,3,4", max_count=3)


@pytest.mark.parametrize("value, message", [
    ("1.0e400", "not infinite"), (float("inf"), "not infinite"), ("NaN", "not NaN"), (float("nan"), "not NaN"),
    ("١٢", "must be a whole number"), ("1.5", "must be a whole number"), ({"a": 1}, "must be a whole number"),
    (10**30, "must be between"), (True, "must be a whole number"),
])
def test_parse_int_refuses_with_a_message(value, message):
    with pytest.raises(BadParameter, match=message):
        parse_int(value)


def test_parse_numbers_accept_plain_numbers():
    assert parse_int("12") == 12 and parse_int("3.0") == 3 and parse_int("1e3") == 1000 and parse_int(7.0) == 7
    assert parse_float("2e-4") == 2e-4 and parse_float(3) == 3.0
    with pytest.raises(BadParameter, match="sensible size"):
        parse_float(10**400)
    with pytest.raises(BadParameter, match="between 0 and 1"):
        parse_float("1.5", low=0, high=1)


def test_the_run_config_reports_overflow_as_a_field_error():
    with pytest.raises(ConfigError) as caught:
        RunConfig.parse({"max_steps": "1.0e400", "epochs": "1e400", "seed": 10**30})
    assert {"max_steps", "epochs", "seed"} <= set(caught.value.errors)
