"""TF Serving's REST API, as an ASGI application (served by uvicorn from `server.py`).

Routes (matched case-insensitively, like TF Serving's regular expressions):

- `POST /v1/models/NAME[/versions/N|/labels/L]:predict` with `{"signature_name": ...,
  "instances": ...}` (row format, answered `{"predictions": ...}`) or `{..., "inputs": ...}`
  (columnar, answered `{"outputs": ...}`).
- `POST ...:classify` / `...:regress` with `{"signature_name": ..., "context": {...},
  "examples": [{feature: value, ...}, ...]}` (see `json_examples.py`), answered
  `{"results": ...}`.
- `GET /v1/models/NAME[/versions/N|/labels/L]`: GetModelStatusResponse as JSON.
- `GET /v1/models/NAME[/versions/N|/labels/L]/metadata`: `{"model_spec": ...,
  "metadata": {"signature_def": SignatureDefMap}}`.

- `GET` of the Prometheus path (`--monitoring_config_file`), when enabled: the server's metrics
  in Prometheus' text format.

Errors are `{"error": "message"}` with TF Serving's HTTP status for the canonical code. Bodies
over `max_body_bytes` get 413; requests running past the timeout get 504 (DEADLINE_EXCEEDED);
predict requests finding every execution slot and the wait queue full get 429
(RESOURCE_EXHAUSTED, see `admission.py`).
JSON is read and written with the `NaN` / `Infinity` / `-Infinity` tokens.

`RestHandler` does the protocol work with no I/O, `(method, path, body) -> (status, body)`;
`make_app` wraps it in a Starlette application that reads bodies, runs the handler in a thread
pool (so TensorFlow never blocks the event loop) and applies the size limit and the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from concurrent.futures import Executor

from tensorflow_serving.apis import model_pb2

from keras_dropout.serving import inference
from keras_dropout.serving import json_examples
from keras_dropout.serving import tensors
from keras_dropout.serving.admission import Admission
from keras_dropout.serving.errors import ServingError
from keras_dropout.serving.monitoring import CONTENT_TYPE as METRICS_CONTENT_TYPE
from keras_dropout.serving.monitoring import Metrics
from keras_dropout.serving.servables import ModelManager

logger = logging.getLogger("keras_dropout.serving")

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_MODEL_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)

# TF Serving's mapping of canonical codes to HTTP statuses; anything else is 500.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def http_status(code: str) -> int:
    """The HTTP status TF Serving answers a canonical error code with."""
    return HTTP_STATUS.get(code, 500)


def dumps(value) -> bytes:
    """JSON as TF Serving writes it: NaN/Infinity tokens, its float formatting (`tensors.dumps`)."""
    return tensors.dumps(value)


def error_body(message: str) -> bytes:
    return dumps({"error": message})


def _version_number(text: str | None) -> int | None:
    if text is None:
        return None
    version = int(text)
    if version > 2**63 - 1:
        raise ServingError("INVALID_ARGUMENT", f"Failed to convert version: {text} to numeric.")
    return version


def _unquote(text: str | None) -> str | None:
    return None if text is None else urllib.parse.unquote(text)


def parse_predict_body(body: bytes) -> tuple[str, str, object]:
    """A predict body to `(signature_name, "instances" | "inputs", payload)`.

    Read as TF Serving reads it (`tensors.parse_json_request`: rapidjson's parse errors, any
    nesting depth), with TF Serving's messages for a body naming both formats or neither.
    """
    signature_name, members = tensors.parse_json_request(body, ("instances", "inputs"))
    if len(members) == 2:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"JSON Value: {tensors.json_value_text(members)} Not formatted correctly expecting "
            "only one of 'inputs' or 'instances' keys to exist",
        )
    if not members:
        raise ServingError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
    ((key, payload),) = members.items()
    return signature_name, key, payload


class RestHandler:
    """TF Serving's REST protocol over a `ModelManager`, without any I/O.

    `handle(method, path, body)` returns `(http_status, json_bytes)` and never raises.

    Args:
        manager: the models.
        metrics: where requests are counted (None: a private `Metrics`).
        method_name_check: `--enable_signature_method_name_check` for `:classify` and
            `:regress`.
    """

    def __init__(
        self,
        manager: ModelManager,
        *,
        metrics: Metrics | None = None,
        method_name_check: bool = False,
    ):
        self._manager = manager
        self._metrics = metrics or Metrics()
        self._method_name_check = method_name_check

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            return 200, dumps(self._dispatch(method.upper(), path, body))
        except ServingError as error:
            return http_status(error.code), error_body(error.message)
        except RecursionError:  # JSON nested deeper than Python recurses.
            return http_status("INVALID_ARGUMENT"), error_body("The request is nested too deeply")
        except MemoryError:
            return http_status("RESOURCE_EXHAUSTED"), error_body(
                "Out of memory while handling the request; send a smaller request"
            )
        except Exception as error:  # A bug must still answer, as JSON, and keep serving.
            logger.exception("Unexpected error for %s %s", method, path)
            return 500, error_body(f"Internal error: {type(error).__name__}: {error}")

    def _dispatch(self, method: str, path: str, body: bytes):
        if not path.lower().startswith("/v1/"):
            # TF Serving hands only (?i)/v1/.* to its REST API; any other path is not found.
            raise ServingError("NOT_FOUND", f"No REST API at {path}: its paths start with /v1/")
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                verb = verb.lower()
                with self._metrics.request(verb, "REST") as record:
                    record.model_name = _unquote(name)
                    return getattr(self, verb)(
                        record.model_name, _version_number(version), _unquote(label), body, record
                    )
        elif method == "GET":
            match = _MODEL_PATH.fullmatch(path)
            if match:
                name, version, label, subresource = match.groups()
                if not name:
                    raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
                name, label = _unquote(name), _unquote(label)
                api = "get_model_metadata" if subresource else "get_model_status"
                with self._metrics.request(api, "REST") as record:
                    record.model_name = name
                    if subresource:
                        return self.metadata(name, _version_number(version), label)
                    return self.status(name, _version_number(version), label)
        raise ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")

    def predict(self, name: str, version: int | None, label: str | None, body: bytes, record=None) -> dict:
        signature_name, key, payload = parse_predict_body(body)
        servable = self._manager.servable(name, version, label)
        specs = servable.input_specs(signature_name)
        if record is not None:
            record.signature_name = servable.resolve_signature(signature_name)
        if self._method_name_check:
            inference.check_predict_method_name(servable, servable.resolve_signature(signature_name))
        if key == "instances":
            arrays = tensors.instances_to_arrays(payload, specs)
            return {"predictions": tensors.outputs_to_predictions(servable.run(signature_name, arrays))}
        arrays = tensors.inputs_to_arrays(payload, specs)
        return {"outputs": tensors.outputs_to_columns(servable.run(signature_name, arrays))}

    def classify(self, name: str, version: int | None, label: str | None, body: bytes, record=None) -> dict:
        request = json_examples.classification_request_from_json(body)
        response = self._examples(inference.classify, request, name, version, label, record)
        return json_examples.classification_result_to_json(response.result)

    def regress(self, name: str, version: int | None, label: str | None, body: bytes, record=None) -> dict:
        request = json_examples.regression_request_from_json(body)
        response = self._examples(inference.regress, request, name, version, label, record)
        return json_examples.regression_result_to_json(response.result)

    def _examples(self, api, request, name, version, label, record):
        """Runs `inference.classify` / `regress` for the URL's model; counts the examples."""
        servable = self._fill_spec(request.model_spec, name, version, label)
        response = api(servable, request, check_method_name=self._method_name_check)
        if record is not None:  # Named once it exists: no client string becomes a metric label.
            record.signature_name = response.model_spec.signature_name
        self._metrics.record_examples(servable.name, inference.example_count(request.input))
        return response

    def _fill_spec(self, model_spec, name, version, label):
        """Puts the URL's model into the request's ModelSpec; returns the servable it names."""
        model_spec.name = name
        if version is not None:
            model_spec.version.value = version
        if label is not None:
            model_spec.version_label = label
        return self._manager.servable(name, version, label)

    def status(self, name: str, version: int | None, label: str | None) -> dict:
        return tensors.proto_to_json(self._manager.status(name, version, label))

    def metadata(self, name: str, version: int | None, label: str | None) -> dict:
        servable = self._manager.servable(name, version, label)
        model_spec = model_pb2.ModelSpec(name=servable.name)
        model_spec.version.value = servable.version
        # As TF Serving's REST handler: the SignatureDefMap is unpacked from its Any, so no "@type".
        return {
            "model_spec": tensors.proto_to_json(model_spec),
            "metadata": {"signature_def": tensors.proto_to_json(servable.signature_def_map())},
        }


def make_app(
    handler: RestHandler,
    executor: Executor,
    *,
    max_body_bytes: int = 32 * 1024 * 1024,
    timeout_s: float | None = 30.0,
    admission: Admission | None = None,
    metrics: Metrics | None = None,
    monitoring_path: str | None = None,
    cors: bool = False,
):
    """The Starlette (ASGI) application around a `RestHandler`.

    Starlette does the HTTP plumbing; every path and method goes to one endpoint, because TF
    Serving's routes (`NAME:predict`, case-insensitive) are matched by `RestHandler` itself and
    every miss must still answer in TF Serving's `{"error": ...}` format.

    Args:
        handler: the protocol handler.
        executor: where `handler.handle` runs (it calls TensorFlow, which must not block the
            event loop).
        max_body_bytes: larger request bodies are answered 413 without being read in full.
        timeout_s: seconds a request may take once its body is read (waiting for an execution
            slot included) before a 504; None for no limit. The TensorFlow call itself cannot
            be interrupted and finishes in the background, holding its slot.
        admission: bounds concurrent POST (predict) work; a full queue answers 429. Status and
            metadata requests are never queued, so health checks answer under load.
        metrics: with `monitoring_path`, `GET monitoring_path` answers `metrics.exposition()`.
        monitoring_path: the Prometheus path (TF Serving's prometheus_config.path).
        cors: add CORS headers (`--rest_api_enable_cors_support`), with Starlette's middleware.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response
    from starlette.routing import Route

    too_large = error_body(
        f"Request body is larger than the limit of {max_body_bytes} bytes (--max_body_bytes)"
    )
    deadline_exceeded = (
        None
        if timeout_s is None
        else error_body(
            f"Deadline exceeded: the request did not finish within {timeout_s * 1000:.0f} ms "
            "(--rest_api_timeout_in_ms)"
        )
    )

    async def read_body(request) -> bytes | None:
        """The body, or None when it exceeds the limit."""
        try:
            if int(request.headers.get("content-length", "0")) > max_body_bytes:
                return None
        except ValueError:
            pass
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def answer(request) -> tuple[int, bytes]:
        body = await read_body(request)
        if body is None:
            return 413, too_large
        # The raw path keeps percent-encoding, so model names decode exactly once.
        raw_path = request.scope.get("raw_path")
        path = (raw_path.decode("latin-1") if raw_path else request.url.path).split("?", 1)[0]
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        slot = None
        if admission is not None and request.method == "POST":
            try:
                slot = await admission.acquire_async(timeout_s)
            except ServingError as error:
                return http_status(error.code), error_body(error.message)
        try:
            future = executor.submit(handler.handle, request.method, path, body)
        except RuntimeError:  # The executor is shut down: the server is stopping.
            if slot is not None:
                slot.release()
            return http_status("UNAVAILABLE"), error_body("The server is shutting down")
        if slot is not None:
            # Released when the work ends, not when the client stops waiting for it.
            future.add_done_callback(lambda _: slot.release())
        remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), remaining)
        except asyncio.TimeoutError:
            return http_status("DEADLINE_EXCEEDED"), deadline_exceeded

    async def endpoint(request):
        if metrics is not None and request.method == "GET" and request.url.path == monitoring_path:
            return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)
        try:
            status, payload = await answer(request)
        except ClientDisconnect:
            return Response(status_code=499)
        return Response(payload, status_code=status, media_type="application/json")

    async def unrouted(request, exc: HTTPException):
        # Starlette's own 404 (a target not starting with "/", e.g. "*") and 405 (a method not
        # listed below) would answer plain text; the handler answers them in TF Serving's format.
        return await endpoint(request)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    middleware = []
    if cors:
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=["*"],
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
            )
        )
    return Starlette(
        routes=[Route("/{path:path}", endpoint, methods=methods)],
        exception_handlers={404: unrouted, 405: unrouted},
        middleware=middleware,
    )
