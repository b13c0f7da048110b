"""The serving API: an ASGI application (FastAPI) over one Service.

Every request is checked in the same order, cheapest first: the token (401), the deployment
(404) and the token's scope (403), the rate limit (429), then the body: its size (413), UTF-8
and JSON (400), its types (422), the input count (413) and each input's length (422). Only
then does it reach a model, so a refused request costs no forward pass and writes no log row.
FastAPI's own docs pages are off (they load their scripts from a CDN); /openapi.json stays.
"""
import hmac
import json
import logging
import math
import time
from contextlib import asynccontextmanager

from django.conf import settings
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from lifecycle.deployments.serving import errors, metrics, schemas
from lifecycle.deployments.serving.errors import ServingError
from lifecycle.deployments.serving.service import Service

log = logging.getLogger(__name__)
VERSION = "1"
router = APIRouter()
ERRORS = {status: {"model": schemas.ErrorResponse} for status in (400, 401, 403, 404, 413, 422, 429, 503)}
OIP_ERRORS = {status: {"model": schemas.OipError} for status in (400, 401, 403, 404, 413, 429, 503)}


def create_app(service=None):
    service = service or Service(port=settings.SERVING_PORT)

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="Lifecycle serving", version=VERSION, docs_url=None, redoc_url=None, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Predictions from released model versions: our JSON API (/v1) and the Open "
                              "Inference Protocol's REST API (/v2). Send `Authorization: Bearer <token>`.")
    app.state.service = service
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(router)
    return app


# --- errors ------------------------------------------------------------------------------------


async def _serving_error(request, exc):
    return errors.from_exception(request.url.path, exc)


async def _validation_error(request, exc):
    return errors.error_response(request.url.path, 422, "invalid_request", _first_problem(exc.errors()))


async def _http_error(request, exc):
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {404: "No such endpoint.", 405: "This endpoint does not take that method."}.get(exc.status_code,
                                                                                              str(exc.detail))
    return errors.error_response(request.url.path, exc.status_code, codes.get(exc.status_code, "http_error"), message,
                                 getattr(exc, "headers", None))


async def _internal_error(request, exc):
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return errors.error_response(request.url.path, 500, "internal_error", "The server failed on this request.")


def _first_problem(problems):
    first = problems[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


# --- bodies ------------------------------------------------------------------------------------


async def read_json(request):
    """The body as JSON, read no further than SERVING_MAX_BODY_BYTES."""
    limit = settings.SERVING_MAX_BODY_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise errors.too_large("body_too_large", f"The body is {int(declared):,} bytes; at most {limit:,} are accepted.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise errors.too_large("body_too_large", f"The body is over {limit:,} bytes, the most accepted.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.bad_request("invalid_utf8", f"The body is not UTF-8 (byte {body[exc.start]:#04x} at offset "
                                                 f"{exc.start}).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.bad_request("invalid_json", f"The body is not JSON: {exc.msg} (line {exc.lineno}, column "
                                                 f"{exc.colno}).") from None
    except RecursionError:
        raise errors.bad_request("invalid_json", "The body nests too deeply to be read.") from None


def validate(model, data):
    if not isinstance(data, dict):
        raise errors.unprocessable("invalid_request", f"The body must be a JSON object, not {type(data).__name__}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.unprocessable("invalid_request", _first_problem(exc.errors())) from None


def check_inputs(texts):
    if not texts:
        raise errors.unprocessable("empty_inputs", "inputs is empty: send at least one text.")
    if len(texts) > settings.SERVING_MAX_INPUTS:
        raise errors.too_large("too_many_inputs", f"{len(texts):,} inputs in one request; at most "
                                                  f"{settings.SERVING_MAX_INPUTS:,} are accepted.")
    for position, text in enumerate(texts):
        if len(text) > settings.SERVING_MAX_INPUT_CHARS:
            raise errors.unprocessable("input_too_long", f"Input {position} is {len(text):,} characters long; at most "
                                                         f"{settings.SERVING_MAX_INPUT_CHARS:,} are accepted.")
        if "\x00" in text:
            raise errors.unprocessable("invalid_text", f"Input {position} holds a NUL character.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise errors.unprocessable("invalid_text", f"Input {position} holds a lone surrogate "
                                                       f"(\\u{ord(text[exc.start]):04x}), which is not text.") from None


def body_schema(model):
    """The request body in the OpenAPI document (the endpoint reads it by hand)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# --- accounting --------------------------------------------------------------------------------


def count(service, name, route, status, started):
    """One request in the metrics; unknown deployment names are counted under "-" (a label per
    name a stranger makes up would grow without bound)."""
    deployment = name if name in service.read else "-"
    metrics.REQUESTS.labels(deployment=deployment, route=route, status=status).inc()
    if status in ("ok", "error"):
        metrics.DURATION.labels(deployment=deployment, route=route).observe(time.perf_counter() - started)


async def answer(request, name, parse):
    """The checks every predict takes, in order, then the prediction; `parse(data)` turns the
    JSON body into (texts, key). Counts the request whatever happens."""
    started = time.perf_counter()
    service = request.app.state.service
    try:
        token = service.authenticate(request.headers.get("authorization"))
        service.deployment(name, token)
        await service.limit(token)
        texts, key = parse(await read_json(request))
        check_inputs(texts)
        result = await service.predict(service.serving(name), texts, key, started)
    except ServingError as exc:
        count(service, name, exc.route, exc.metric_status, started)
        raise
    count(service, name, result.side, "ok", started)
    return result


# --- /v1 ---------------------------------------------------------------------------------------


def _parse_predict(data):
    body = validate(schemas.PredictRequest, data)
    return body.inputs, body.key


@router.post("/v1/deployments/{name}/predict", response_model=schemas.PredictResponse, responses=ERRORS,
             openapi_extra=body_schema(schemas.PredictRequest), tags=["predict"])
async def predict(name: str, request: Request):
    """Answer each input with the deployment's current release (stable, or the canary's share)."""
    result = await answer(request, name, _parse_predict)
    info = result.model.info
    outputs = [{"label": o["label"], "probabilities": o["probabilities"]} if "label" in o else {"text": o["text"]}
               for o in result.outputs]
    return JSONResponse({"request_id": str(result.request_id), "deployment": name, "model": info.model_slug,
                         "version": info.number, "route": result.side, "outputs": outputs})


@router.post("/v1/feedback", response_model=schemas.FeedbackResponse, responses=ERRORS,
             openapi_extra=body_schema(schemas.FeedbackRequest), tags=["feedback"])
async def feedback(request: Request):
    """A person's word on one answer: the right label, or whether it was correct."""
    service = request.app.state.service
    token = service.authenticate(request.headers.get("authorization"))
    await service.limit(token)
    body = validate(schemas.FeedbackRequest, await read_json(request))
    if body.label is None and body.correct is None:
        raise errors.unprocessable("invalid_feedback", 'Give "label" (the right answer) or "correct" (true or false).')
    request_id = _uuid(body.request_id)
    given = await service.feedback(token, request_id, body.position, body.label or "", body.correct, body.note)
    return JSONResponse({"request_id": str(given.request_id), "position": given.position,
                         "predicted_label": given.predicted_label, "label": given.label, "correct": given.correct,
                         "override": given.is_override})


def _uuid(value):
    import uuid

    try:
        return uuid.UUID(value)
    except ValueError:
        raise errors.unprocessable("invalid_request", "request_id is not a request id this service returned.") from None


# --- the Open Inference Protocol (v2 REST) -----------------------------------------------------


@router.get("/v2", tags=["open inference protocol"])
async def server_metadata():
    return {"name": "lifecycle-serving", "version": VERSION, "extensions": []}


@router.get("/v2/health/live", tags=["open inference protocol"])
async def live():
    return {"live": True}


@router.get("/v2/health/ready", tags=["open inference protocol"])
async def ready(request: Request):
    """200 once every deployment serves its current release (or is known not to be servable)."""
    is_ready = request.app.state.service.ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def _model_for(request, name):
    service = request.app.state.service
    token = service.authenticate(request.headers.get("authorization"))
    service.deployment(name, token)
    return service


@router.get("/v2/models/{name}", response_model=schemas.ModelMetadata, responses=OIP_ERRORS,
            tags=["open inference protocol"])
async def model_metadata(name: str, request: Request):
    service = _model_for(request, name)
    model = service.stable_model(name)
    if model is None:
        service.serving(name)  # says why: unavailable or still loading
        raise errors.unavailable("loading", f"{name}'s model is still loading.")
    classes = len(model.labels)
    outputs = ([{"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]}] if model.info.classifies
               else [{"name": "text", "datatype": "BYTES", "shape": [-1]}])
    return JSONResponse({"name": name, "platform": "pytorch_safetensors",
                         "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}], "outputs": outputs})


@router.get("/v2/models/{name}/ready", tags=["open inference protocol"], responses=OIP_ERRORS)
async def model_ready(name: str, request: Request):
    service = _model_for(request, name)
    route = service.applied.get(name)
    is_ready = bool(route) and name not in service.unavailable and not route.interim
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


def _parse_infer(data):
    body = validate(schemas.InferRequest, data)
    if len(body.inputs) != 1:
        raise errors.bad_request("invalid_request", f"Send one input tensor (BYTES, the texts); got {len(body.inputs)}.")
    tensor = body.inputs[0]
    if tensor.datatype != "BYTES":
        raise errors.bad_request("invalid_request", f"Input {tensor.name!r} is {tensor.datatype}; this model takes "
                                                    "BYTES (one text per element).")
    texts = [item[0] if isinstance(item, list) and len(item) == 1 else item for item in tensor.data]
    if not all(isinstance(text, str) for text in texts):
        raise errors.bad_request("invalid_request", f"Input {tensor.name!r}'s data must be strings.")
    shape_ok = (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1))
    if not shape_ok or math.prod(tensor.shape) != len(texts):
        raise errors.bad_request("invalid_request", f"Input {tensor.name!r} has shape {tensor.shape} but "
                                                    f"{len(texts)} strings; use shape [{len(texts)}].")
    key = (body.parameters or {}).get("key")
    if key is not None and (not isinstance(key, str) or len(key) > schemas.MAX_KEY_CHARS):
        raise errors.bad_request("invalid_request", f'parameters.key is a string of at most {schemas.MAX_KEY_CHARS} '
                                                    'characters.')
    return texts, key, body


@router.post("/v2/models/{name}/infer", response_model=schemas.InferResponse, responses=OIP_ERRORS,
             openapi_extra=body_schema(schemas.InferRequest), tags=["open inference protocol"])
async def infer(name: str, request: Request):
    parsed = {}

    def parse(data):
        texts, key, parsed["body"] = _parse_infer(data)
        _check_requested(parsed["body"], request.app.state.service.stable_model(name))
        return texts, key

    result = await answer(request, name, parse)
    body, info = parsed["body"], result.model.info
    outputs = _tensors(result, len(result.outputs))
    wanted = {o.name for o in body.outputs} if body.outputs else None
    return JSONResponse({
        "model_name": name, "model_version": str(info.number), "id": body.id or str(result.request_id),
        "parameters": {"request_id": str(result.request_id), "route": result.side, "model": info.model_slug},
        "outputs": [o for o in outputs if wanted is None or o["name"] in wanted]})


def _check_requested(body, model):
    if not body.outputs or model is None:
        return
    known = {"label", "probabilities"} if model.info.classifies else {"text"}
    unknown = sorted({o.name for o in body.outputs} - known)
    if unknown:
        raise errors.bad_request("invalid_request", f"Unknown output {', '.join(unknown)}; this model gives "
                                                    f"{', '.join(sorted(known))}.")


def _tensors(result, n):
    if not result.model.info.classifies:
        return [{"name": "text", "datatype": "BYTES", "shape": [n], "data": [o["text"] for o in result.outputs]}]
    labels = result.model.labels
    flat = [o["probabilities"][label] for o in result.outputs for label in labels]
    return [{"name": "label", "datatype": "BYTES", "shape": [n], "data": [o["label"] for o in result.outputs]},
            {"name": "probabilities", "datatype": "FP32", "shape": [n, len(labels)], "data": flat,
             "parameters": {"labels": json.dumps(labels)}}]


# --- /metrics ----------------------------------------------------------------------------------


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request):
    """Prometheus scrapes: Bearer METRICS_TOKEN when set; unset, open with DEBUG on and 404 off."""
    expected = settings.METRICS_TOKEN
    if not expected:
        if not settings.DEBUG:
            raise errors.not_found("No such endpoint.")
    else:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise errors.unauthorized("Scrapes need the metrics token (Authorization: Bearer <METRICS_TOKEN>).")
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
