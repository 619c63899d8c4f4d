"""TF Serving's gRPC API over a `ModelManager`.

`tensorflow.serving.PredictionService`: Predict, Classify, Regress, MultiInference (see
`inference.py`) and GetModelMetadata. `tensorflow.serving.ModelService`: GetModelStatus and
HandleReloadConfigRequest (the new ModelServerConfig applies as a reloaded config file does). Failures carry the same canonical codes and
messages as the REST API: unknown model NOT_FOUND, unknown signature FAILED_PRECONDITION,
missing/extra inputs or a wrong dtype INVALID_ARGUMENT. Input TensorProtos are not cast: their
dtype must be the signature's, as with TF Serving. A TensorProto declaring more bytes than a
request may carry (`max_tensor_bytes`) is INVALID_ARGUMENT before anything is allocated.
Output tensors travel in the typed fields (`float_val`, ...) as TF Serving sends them, or in
`tensor_content` with `tensor_content=True` (`--enable_serialization_as_tensor_content`).

Inference requests go through the server's `Admission` (the REST API's too): a full wait queue
answers RESOURCE_EXHAUSTED, and a request still waiting for a slot when the client's deadline
passes is dropped without running. Every request is counted in the server's `Metrics`.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from keras_dropout.serving import inference
from keras_dropout.serving import tensors
from keras_dropout.serving.admission import Admission
from keras_dropout.serving.errors import ServingError
from keras_dropout.serving.monitoring import Metrics
from keras_dropout.serving.servables import ModelManager
from keras_dropout.serving.servables import model_configs_from_proto

logger = logging.getLogger("keras_dropout.serving")

_SIGNATURE_DEF_FIELD = "signature_def"


def _answer_errors(method):
    """Turns a `ServingError` into the RPC's status; a bug into INTERNAL."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as error:
            context.abort(grpc.StatusCode[error.code], error.message)
        except RecursionError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The request is nested too deeply")
        except MemoryError:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "Out of memory while handling the request; send a smaller request",
            )
        except Exception as error:  # A bug must answer INTERNAL and keep the server up.
            logger.exception("Unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")

    return wrapper


def _required_spec(request):
    if not request.HasField("model_spec"):
        raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
    return request.model_spec


def _spec_choice(spec) -> tuple[str, int | None, str | None]:
    """(name, version, label) of a ModelSpec, as `ModelManager.servable` takes them."""
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`tensorflow.serving.PredictionService` backed by a `ModelManager`.

    Args:
        manager: the models.
        admission: bounds concurrent inference calls (None: no bound).
        max_tensor_bytes: the most bytes one input TensorProto may declare (None: no bound).
        metrics: where requests are counted (None: a private `Metrics`).
        tensor_content: answer tensors in `tensor_content` instead of the typed fields.
        method_name_check: `--enable_signature_method_name_check` for Classify, Regress and
            MultiInference.
    """

    def __init__(
        self,
        manager: ModelManager,
        admission: Admission | None = None,
        max_tensor_bytes: int | None = None,
        *,
        metrics: Metrics | None = None,
        tensor_content: bool = False,
        method_name_check: bool = False,
    ):
        self._manager = manager
        self._admission = admission
        self._max_tensor_bytes = max_tensor_bytes
        self._metrics = metrics or Metrics()
        self._tensor_content = tensor_content
        self._method_name_check = method_name_check

    def _admitted(self, context):
        """The admission slot for one inference request (waits for it)."""
        if self._admission is None:
            return contextlib.nullcontext()
        return self._admission.acquire(context.time_remaining())

    def _serve(self, api: str, model_spec, context, work):
        """Runs `work(servable, record)` for the model `model_spec` names, admitted and counted."""
        with self._metrics.request(api, "GRPC") as record:
            record.model_name = model_spec.name if model_spec is not None else ""
            with self._admitted(context):
                if not context.is_active():  # Deadline passed or cancelled while queued.
                    raise ServingError("CANCELLED", "The client gave up before the request ran")
                servable = self._manager.servable(*_spec_choice(model_spec))
                return work(servable, record)

    @_answer_errors
    def Predict(self, request, context):
        return self._serve("predict", _required_spec(request), context, _predict_work(self, request))

    @_answer_errors
    def Classify(self, request, context):
        return self._serve(
            "classify", _required_spec(request), context, self._examples_work(inference.classify, request)
        )

    @_answer_errors
    def Regress(self, request, context):
        return self._serve(
            "regress", _required_spec(request), context, self._examples_work(inference.regress, request)
        )

    def _examples_work(self, api, request):
        """`_serve`'s work for Classify or Regress (`api` is `inference.classify` / `regress`)."""

        def work(servable, record):
            response = api(servable, request, check_method_name=self._method_name_check)
            # Named once it exists: a client's string never becomes a metric label.
            record.signature_name = response.model_spec.signature_name
            self._metrics.record_examples(servable.name, inference.example_count(request.input))
            return response

        return work

    @_answer_errors
    def MultiInference(self, request, context):
        def work(servable, record):
            response = inference.multi_inference(
                servable, request, check_method_name=self._method_name_check
            )
            self._metrics.record_examples(servable.name, inference.example_count(request.input))
            return response

        # TF Serving finds the servable from the first task (an empty ModelSpec without one,
        # which fails as an unnamed model), then checks that every task names the same model.
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        return self._serve("multi_inference", spec, context, work)

    @_answer_errors
    def GetModelMetadata(self, request, context):
        with self._metrics.request("get_model_metadata", "GRPC") as record:
            if not request.metadata_field:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "GetModelMetadataRequest must specify at least one metadata_field",
                )
            for field in request.metadata_field:
                if field != _SIGNATURE_DEF_FIELD:
                    raise ServingError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
            spec = _required_spec(request)
            record.model_name = spec.name
            servable = self._manager.servable(*_spec_choice(spec))
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata[_SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
            return response


def _predict_work(service: PredictionService, request):
    def work(servable, record):
        signature_name = servable.resolve_signature(request.model_spec.signature_name)
        record.signature_name = signature_name
        if service._method_name_check:
            inference.check_predict_method_name(servable, signature_name)
        inputs = {
            name: tensors.tensor_proto_to_array(proto, name, max_bytes=service._max_tensor_bytes)
            for name, proto in request.inputs.items()
        }
        outputs = servable.run(signature_name, inputs, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(
                tensors.array_to_tensor_proto(array, tensor_content=service._tensor_content)
            )
        return response

    return work


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """`tensorflow.serving.ModelService` backed by a `ModelManager` (status only)."""

    def __init__(self, manager: ModelManager, metrics: Metrics | None = None):
        self._manager = manager
        self._metrics = metrics or Metrics()

    @_answer_errors
    def GetModelStatus(self, request, context):
        with self._metrics.request("get_model_status", "GRPC") as record:
            spec = _required_spec(request)
            record.model_name = spec.name
            return self._manager.status(*_spec_choice(spec))

    @_answer_errors
    def HandleReloadConfigRequest(self, request, context):
        """Serves the request's ModelServerConfig from now on, as `--model_config_file` reloads."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            configs = model_configs_from_proto(request.config, "ReloadConfigRequest")
        except ValueError as error:
            raise ServingError("INVALID_ARGUMENT", str(error)) from None
        self._manager.reconfigure(configs)
        response.status.error_code = 0
        return response


def add_services(
    server: grpc.Server,
    manager: ModelManager,
    *,
    admission: Admission | None = None,
    max_tensor_bytes: int | None = None,
    metrics: Metrics | None = None,
    tensor_content: bool = False,
    method_name_check: bool = False,
) -> None:
    """Registers both services on a `grpc.Server` (see `PredictionService` for the options)."""
    metrics = metrics or Metrics()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(
            manager,
            admission,
            max_tensor_bytes,
            metrics=metrics,
            tensor_content=tensor_content,
            method_name_check=method_name_check,
        ),
        server,
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, metrics), server)


def add_health_service(server: grpc.Server):
    """Registers gRPC's standard health service (`grpc.health.v1.Health`), SERVING for the
    server ("") and both TF Serving services; returns the servicer (`enter_graceful_shutdown`
    turns them NOT_SERVING)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    servicer = health.HealthServicer()
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer
