"""The embedded TF-Serving-compatible server: gRPC and REST over one `ModelManager`.

`keras-dropout serve` runs `serve_forever(args)`; Python code uses `Server` directly:

```python
server = Server(model_name="demo", model_base_path="/models/demo", port=0, rest_api_port=0)
server.start()              # returns once the models are loaded and both ports listen
print(server.rest_url, server.grpc_target)
...
server.stop(grace=5)        # in-flight requests finish
```

The command line is `tensorflow_model_server`'s (`add_serve_arguments`): every flag of TF
Serving's `main.cc` is accepted, implemented or, for those in `IGNORED_FLAGS`, named in a
warning as ignored; plus `--host`, `--max_body_bytes`, `--max_concurrent_requests` and
`--max_queued_requests` (see `admission.py`: inference work beyond the slots waits in a bounded
queue; a full queue answers 429 / RESOURCE_EXHAUSTED; with `--enable_batching` a request holds
its slot while it waits for its batch). gRPC honours the client's deadline the way REST honours
`--rest_api_timeout_in_ms` (until a request is admitted). Differences from
`tensorflow_model_server`: port 0 picks a free port (TF Serving's 0 disables that API); a model
that fails its first load is reported in status instead of stopping the server; the default
host is 127.0.0.1; each loaded version has batch threads of its own.

This module imports only the standard library, so `import keras_dropout.serving` works without
the `serving` extra; gRPC, uvicorn and tensorflow-serving-api are imported by `Server`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger("keras_dropout.serving")

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_REST_API_TIMEOUT_MS = 30_000
DEFAULT_MAX_CONCURRENT_REQUESTS = 8
DEFAULT_MAX_QUEUED_REQUESTS = 64
SHUTDOWN_GRACE_S = 10.0
_STARTUP_TIMEOUT_S = 30.0


def _check_port(name: str, port) -> None:
    if port is not None and not (isinstance(port, int) and 0 <= port <= 65535):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an integer in [0, 65535] "
            f"(0 picks a free port). Received: {name}={port!r}"
        )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it every REST answer (headers and body written apart) waits ~40 ms for the
    # client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"Cannot listen for REST on {_host_port(host, port)}: {error}") from None
    return sock


class Server:
    """A TF-Serving-compatible model server (gRPC + REST) running in background threads.

    Args:
        model_name: the model's name for a single model (default "default").
        model_base_path: directory of integer-named SavedModel versions.
        model_config_file: a TF Serving `models.config` (text ModelServerConfig) for several
            models, version policies and labels; wins over the two above.
        port: gRPC port; 0 picks a free one (see `.port` after `start`).
        rest_api_port: REST port; 0 picks a free one; None serves no REST.
        host: interface to listen on.
        file_system_poll_wait_seconds: seconds between polls for new versions; <= 0 polls once.
        max_body_bytes: REST bodies above this get 413; also gRPC's receive limit and the most
            bytes one input TensorProto may declare.
        request_timeout_s: REST requests running longer get 504; None for no limit.
        max_concurrent_requests: predict requests (REST and gRPC together) executing at once.
        max_queued_requests: predict requests waiting for one of those slots; more are answered
            429 / RESOURCE_EXHAUSTED at once.
        models: a list of `servables.ModelConfig`, instead of the three model arguments.
        num_threads: request threads for each of REST and gRPC, besides those that execute or
            wait for predict work (`rest_api_num_threads` / `grpc_max_threads` override it).
        num_load_threads: versions loaded in parallel.
        grpc_socket_path: also serve gRPC on this UNIX socket.
        grpc_channel_arguments: `(key, value)` gRPC server arguments.
        grpc_max_threads: gRPC request threads (default `num_threads`).
        enable_grpc_healthcheck_service: serve `grpc.health.v1.Health` (SERVING while up).
        rest_api_num_threads: REST request threads (default `num_threads`).
        rest_api_enable_cors_support: answer REST with `Access-Control-Allow-*` headers.
        model_config_file_poll_wait_seconds: re-read `model_config_file` this often and apply
            its changes (models added, removed, policies, labels); <= 0 reads it once.
        batching: a `batching.BatchingOptions`: merge concurrent requests to one signature of
            one version into one call (`--enable_batching`); None serves each on its own.
        per_model_batching: with `batching`, a version's own `batching_params.pbtxt` wins.
        monitoring_path: serve Prometheus metrics at this REST path; None serves none.
        tensor_content: gRPC answers put values in `tensor_content`, not the typed fields.
        enable_model_warmup: replay warmup requests when a version loads.
        num_request_iterations_for_warmup: times each warmup request runs.
        saved_model_tags: the MetaGraph tags to load.
        enable_signature_method_name_check: Classify/Regress/MultiInference refuse signatures
            whose method_name is not theirs, Predict those of other APIs.
        session_config: a `tf.compat.v1.ConfigProto` every version's session runs with.
    """

    def __init__(
        self,
        model_name: str | None = None,
        model_base_path: str | None = None,
        model_config_file: str | None = None,
        port: int = 8500,
        rest_api_port: int | None = 8501,
        host: str = "127.0.0.1",
        file_system_poll_wait_seconds: float = 1,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        request_timeout_s: float | None = DEFAULT_REST_API_TIMEOUT_MS / 1000,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
        max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
        *,
        models=None,
        num_threads: int = 16,
        num_load_threads: int = 1,
        grpc_socket_path: str | None = None,
        grpc_channel_arguments=(),
        grpc_max_threads: int | None = None,
        enable_grpc_healthcheck_service: bool = False,
        rest_api_num_threads: int | None = None,
        rest_api_enable_cors_support: bool = False,
        model_config_file_poll_wait_seconds: float = 0,
        batching=None,
        per_model_batching: bool = False,
        monitoring_path: str | None = None,
        tensor_content: bool = False,
        enable_model_warmup: bool = True,
        num_request_iterations_for_warmup: int = 1,
        saved_model_tags=("serve",),
        enable_signature_method_name_check: bool = False,
        session_config=None,
    ):
        from keras_dropout.serving.admission import Admission
        from keras_dropout.serving.monitoring import Metrics
        from keras_dropout.serving.servables import ModelManager, model_configs

        _check_port("port", port)
        _check_port("rest_api_port", rest_api_port)
        if not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
            raise ValueError(
                "Invalid value received for argument `max_body_bytes`. Expected a positive "
                f"integer. Received: max_body_bytes={max_body_bytes!r}"
            )
        if request_timeout_s is not None and request_timeout_s <= 0:
            raise ValueError(
                "Invalid value received for argument `request_timeout_s`. Expected a positive "
                f"number or None. Received: request_timeout_s={request_timeout_s!r}"
            )
        for name, value in (("grpc_max_threads", grpc_max_threads),
                            ("rest_api_num_threads", rest_api_num_threads)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected a positive integer "
                    f"or None. Received: {name}={value!r}"
                )
        if monitoring_path is not None and not monitoring_path.startswith("/"):
            raise ValueError(
                "Invalid value received for argument `monitoring_path`. Expected a path starting "
                f"with '/'. Received: monitoring_path={monitoring_path!r}"
            )
        self.admission = Admission(max_concurrent_requests, max_queued_requests)
        self.metrics = Metrics()
        self.model_config_file = model_config_file
        configs = models if models is not None else model_configs(
            model_name, model_base_path, model_config_file
        )
        self.batching = batching
        self.manager = ModelManager(
            configs,
            file_system_poll_wait_seconds=file_system_poll_wait_seconds,
            num_load_threads=num_load_threads,
            loader=functools.partial(
                self._load_version,
                warmup=enable_model_warmup,
                warmup_iterations=num_request_iterations_for_warmup,
                tags=tuple(saved_model_tags),
                session_config=session_config,
                per_model_batching=per_model_batching,
            ),
        )
        self.host = host
        self.port = port
        self.rest_api_port = rest_api_port
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self.grpc_socket_path = grpc_socket_path
        self.grpc_channel_arguments = list(grpc_channel_arguments)
        self.enable_grpc_healthcheck_service = enable_grpc_healthcheck_service
        self.rest_api_enable_cors_support = rest_api_enable_cors_support
        self.model_config_file_poll_wait_seconds = model_config_file_poll_wait_seconds
        self.monitoring_path = monitoring_path
        self.tensor_content = tensor_content
        self.enable_signature_method_name_check = enable_signature_method_name_check
        self._grpc_threads = grpc_max_threads or num_threads
        self._rest_threads = rest_api_num_threads or num_threads
        self._grpc = None
        self._health = None
        self._uvicorn = None
        self._rest_thread = None
        self._rest_executor = None
        self._config_poller = None
        self._started = False
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def _load_version(self, name, version, path, *, per_model_batching, **options):
        """The manager's loader: `load_servable` with the server's options, counted in metrics."""
        import time

        from keras_dropout.serving.servables import load_servable

        batching = self.batching
        if batching is not None and per_model_batching:
            batching = _model_batching_options(path, batching)
        start = time.perf_counter()
        try:
            servable = load_servable(
                name,
                version,
                path,
                batching=batching,
                on_batch=functools.partial(self.metrics.record_batch, name),
                **options,
            )
        except BaseException:
            self.metrics.record_load(path, False, time.perf_counter() - start)
            raise
        self.metrics.record_load(path, True, time.perf_counter() - start)
        return servable

    @property
    def grpc_target(self) -> str:
        """`host:port` for `grpc.insecure_channel`."""
        return _host_port(self.host, self.port)

    @property
    def rest_url(self) -> str | None:
        """`http://host:port` of the REST API (None when REST is off)."""
        if self.rest_api_port is None:
            return None
        return "http://" + _host_port(self.host, self.rest_api_port)

    def start(self, wait_for_models: bool = True) -> Server:
        """Loads the models (waiting for the first load unless told not to), then listens.

        Returns once both ports accept connections. Raises OSError when a port is taken.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("Server.start() was already called")
            self._started = True
        try:
            self.manager.start(wait=wait_for_models)
            self._start_grpc()
            if self.rest_api_port is not None:
                self._start_rest()
            if self.model_config_file and self.model_config_file_poll_wait_seconds > 0:
                self._config_poller = threading.Thread(
                    target=self._poll_model_config, name="kd-config-poller", daemon=True
                )
                self._config_poller.start()
        except BaseException:
            self.stop(grace=0)
            raise
        logger.info("Running gRPC ModelServer at %s ...", self.grpc_target)
        if self.rest_url:
            logger.info("Exporting HTTP/REST API at:%s ...", _host_port(self.host, self.rest_api_port))
        return self

    def _poll_model_config(self) -> None:
        """Re-reads --model_config_file; a file that does not parse keeps the current config."""
        from keras_dropout.serving.servables import parse_model_config

        try:
            with open(self.model_config_file, encoding="utf-8") as handle:
                last_text = handle.read()  # What the server started with.
        except OSError:
            last_text = None
        while not self._stopped.wait(self.model_config_file_poll_wait_seconds):
            try:
                with open(self.model_config_file, encoding="utf-8") as handle:
                    text = handle.read()
                if text == last_text:
                    continue
                configs = parse_model_config(text, self.model_config_file)
                last_text = text
                self.manager.reconfigure(configs)
            except (OSError, ValueError) as error:
                logger.error("Keeping the current model config: %s", error)
            except Exception:  # The poller must survive anything a reload throws.
                logger.exception("Reloading %s failed", self.model_config_file)

    def _start_grpc(self) -> None:
        import grpc

        from keras_dropout.serving import grpc_service

        # gRPC handlers wait for their slot in their own thread: room for every admitted request
        # plus `grpc_max_threads` for the rest; beyond that gRPC itself answers RESOURCE_EXHAUSTED.
        workers = self._grpc_threads + self.admission.max_concurrent + self.admission.max_queued
        options = dict(
            [
                ("grpc.max_receive_message_length", self.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                # A taken port must fail, not be silently shared.
                ("grpc.so_reuseport", 0),
            ]
        )
        options.update(self.grpc_channel_arguments)
        self._grpc = grpc.server(
            ThreadPoolExecutor(workers, thread_name_prefix="kd-grpc"),
            maximum_concurrent_rpcs=workers,
            options=list(options.items()),
        )
        grpc_service.add_services(
            self._grpc,
            self.manager,
            admission=self.admission,
            max_tensor_bytes=self.max_body_bytes,
            metrics=self.metrics,
            tensor_content=self.tensor_content,
            method_name_check=self.enable_signature_method_name_check,
        )
        if self.enable_grpc_healthcheck_service:
            self._health = grpc_service.add_health_service(self._grpc)
        address = _host_port(self.host, self.port)
        try:
            bound = self._grpc.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(f"Cannot listen for gRPC on {address}: {error}") from None
        if not bound:
            raise OSError(f"Cannot listen for gRPC on {address}")
        self.port = bound
        if self.grpc_socket_path:
            socket_address = "unix:" + self.grpc_socket_path
            try:
                if not self._grpc.add_insecure_port(socket_address):
                    raise RuntimeError("not bound")
            except RuntimeError as error:
                raise OSError(f"Cannot listen for gRPC on {socket_address}: {error}") from None
        self._grpc.start()

    def _start_rest(self) -> None:
        import uvicorn

        from keras_dropout.serving import rest

        sock = _bind(self.host, self.rest_api_port)
        self.rest_api_port = sock.getsockname()[1]
        # REST requests wait for their slot in the event loop; only executing ones take a thread.
        self._rest_executor = ThreadPoolExecutor(
            self._rest_threads + self.admission.max_concurrent, thread_name_prefix="kd-rest"
        )
        app = rest.make_app(
            rest.RestHandler(
                self.manager,
                metrics=self.metrics,
                method_name_check=self.enable_signature_method_name_check,
            ),
            self._rest_executor,
            max_body_bytes=self.max_body_bytes,
            timeout_s=self.request_timeout_s,
            admission=self.admission,
            metrics=self.metrics if self.monitoring_path else None,
            monitoring_path=self.monitoring_path,
            cors=self.rest_api_enable_cors_support,
        )
        config = uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, server_header=False
        )
        self._uvicorn = uvicorn.Server(config)
        self._rest_thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, name="kd-rest", daemon=True
        )
        self._rest_thread.start()
        ready = threading.Event()
        for _ in range(int(_STARTUP_TIMEOUT_S / 0.01)):
            if self._uvicorn.started or not self._rest_thread.is_alive():
                break
            ready.wait(0.01)
        if not self._uvicorn.started:
            raise OSError(f"The REST server did not start on {_host_port(self.host, self.rest_api_port)}")

    def stop(self, grace: float | None = 5.0) -> None:
        """Stops listening, lets in-flight requests finish (up to `grace` s), unloads models."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        grace = 0.0 if grace is None else float(grace)
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        if self._uvicorn is not None:
            self._uvicorn.config.timeout_graceful_shutdown = grace
            self._uvicorn.should_exit = True
        grpc_done = self._grpc.stop(grace) if self._grpc is not None else None
        if self._rest_thread is not None:
            self._rest_thread.join(grace + 5)
        if grpc_done is not None:
            grpc_done.wait(grace + 5)
        if self._rest_executor is not None:
            self._rest_executor.shutdown(wait=False, cancel_futures=True)
        if self._config_poller is not None:
            self._config_poller.join()
        self.manager.stop()
        logger.info("Server stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until `stop` has been called; False on timeout."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"


def _model_batching_options(path: str, default):
    """A version's own `batching_params.pbtxt` (`--enable_per_model_batching_parameters`).

    As in TF Serving, the file's parameters replace the global ones, except the number and
    name of the batch threads, which stay the server's. Without the file the global ones apply.
    """
    import dataclasses

    import tensorflow as tf

    from keras_dropout.serving.batching import BatchingOptions
    from keras_dropout.serving.config_protos import parse_batching_parameters
    from keras_dropout.serving.errors import ServingError

    file_path = os.path.join(path, PER_MODEL_BATCHING_FILE)
    if not tf.io.gfile.exists(file_path):
        return default
    try:
        with tf.io.gfile.GFile(file_path) as handle:
            options = BatchingOptions.from_proto(parse_batching_parameters(handle.read(), file_path))
    except ValueError as error:
        raise ServingError("INVALID_ARGUMENT", str(error)) from None
    return dataclasses.replace(
        options,
        num_batch_threads=default.num_batch_threads,
        thread_pool_name=default.thread_pool_name,
    )


def _parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "t", "yes"):
        return True
    if value in ("0", "false", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_bool(parser, name: str, default, help: str) -> None:
    # TF Serving's flags library takes `--name`, `--name=true` and `--name=false`.
    parser.add_argument(
        f"--{name}", type=_parse_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help
    )


def parse_grpc_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """`--grpc_channel_arguments`: "key=value,key=value" with integer values passed as ints.

    Raises:
        ValueError: an entry without "=" or with an empty key.
    """
    arguments = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = entry.partition("=")
        if not separator or not key:
            raise ValueError(
                f"--grpc_channel_arguments: expected key=value entries separated by commas; "
                f"got {entry!r}"
            )
        try:
            arguments.append((key, int(value)))
        except ValueError:
            arguments.append((key, value))
    return arguments


# tensorflow_model_server flags this server accepts and ignores, with why (named in a warning).
IGNORED_FLAGS = {
    "allow_version_labels_for_unavailable_models": (
        _parse_bool,
        "labels may always name versions that are not loaded yet here",
    ),
    "num_unload_threads": (int, "unloading drops a reference and takes no thread"),
    "max_num_load_retries": (
        int,
        "a failed version is loaded again once its directory changes instead of on a timer",
    ),
    "load_retry_interval_micros": (
        int,
        "a failed version is loaded again once its directory changes instead of on a timer",
    ),
    "flush_filesystem_caches": (_parse_bool, "no filesystem caches are kept"),
    "use_alts_credentials": (_parse_bool, "ALTS is not supported; gRPC is served insecure"),
    "ssl_config_file": (str, "TLS is not supported; gRPC is served insecure (terminate TLS in a proxy)"),
    "platform_config_file": (str, "only the TensorFlow platform is served"),
    "per_process_gpu_memory_fraction": (
        float,
        "TensorFlow's own GPU memory allocation applies (set TF_FORCE_GPU_ALLOW_GROWTH=true to grow)",
    ),
    "remove_unused_fields_from_bundle_metagraph": (_parse_bool, "a memory optimisation of TF Serving's C++ loader"),
    "prefer_tflite_model": (_parse_bool, "TensorFlow Lite models are not served"),
    "num_tflite_pools": (int, "TensorFlow Lite models are not served"),
    "num_tflite_interpreters_per_pool": (int, "TensorFlow Lite models are not served"),
    "xla_cpu_compilation_enabled": (_parse_bool, "XLA-compiled functions run as TensorFlow compiles them"),
    "xla_gpu_compilation_enabled": (_parse_bool, "XLA-compiled functions run as TensorFlow compiles them"),
    "enable_profiler": (_parse_bool, "the TensorFlow profiler service is not served"),
    "thread_pool_factory_config_file": (str, "requests run on this server's own thread pools"),
    "mixed_precision": (str, "SavedModels run in the precision they were exported in"),
    "skip_initialize_tpu": (_parse_bool, "TPUs are not used"),
}


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds `tensorflow_model_server`'s command line (and `--host`, `--max_body_bytes`, the
    admission limits).

    Every flag TF Serving's `main.cc` lists is accepted: those in `IGNORED_FLAGS` only with a
    warning naming them (see `ignored_flag_warnings`), the others implemented.
    """
    parser.add_argument(
        "--port", type=int, default=8500, help="gRPC port (0 picks a free port). Default 8500."
    )
    parser.add_argument(
        "--grpc_socket_path",
        default="",
        help="Also listen for gRPC on this UNIX socket (relative or absolute path).",
    )
    parser.add_argument(
        "--grpc_channel_arguments",
        default="",
        help="Comma-separated gRPC server arguments, e.g. grpc.max_connection_age_ms=2000.",
    )
    parser.add_argument(
        "--grpc_max_threads",
        type=int,
        default=None,
        help="gRPC threads besides those of admitted requests. Default 16.",
    )
    _add_bool(
        parser, "enable_grpc_healthcheck_service", False, "Serve the standard gRPC health service."
    )
    parser.add_argument(
        "--rest_api_port", type=int, default=8501, help="REST port (0 picks a free port). Default 8501."
    )
    parser.add_argument(
        "--rest_api_num_threads",
        type=int,
        default=None,
        help="REST threads besides those of admitted requests. Default 16.",
    )
    parser.add_argument(
        "--rest_api_timeout_in_ms",
        type=int,
        default=DEFAULT_REST_API_TIMEOUT_MS,
        help="REST request timeout (answers 504); <= 0 for none. Default 30000.",
    )
    _add_bool(parser, "rest_api_enable_cors_support", False, "Answer REST with CORS headers.")
    parser.add_argument("--model_name", default="default", help="Name of the model. Default 'default'.")
    parser.add_argument(
        "--model_base_path", default=None, help="Directory of integer-named SavedModel versions."
    )
    parser.add_argument(
        "--model_config_file",
        default=None,
        help="TF Serving models.config (text ModelServerConfig: several models, version policies, "
        "labels). Overrides --model_name/--model_base_path.",
    )
    parser.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0,
        help="Seconds between reloads of --model_config_file; 0 reads it once. Default 0.",
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1,
        help="Seconds between polls of the base paths for new versions; <= 0 polls once. Default 1.",
    )
    parser.add_argument(
        "--num_load_threads", type=int, default=0, help="Versions loaded in parallel (0 means 1)."
    )
    _add_bool(parser, "enable_batching", False, "Merge concurrent requests to one signature.")
    parser.add_argument(
        "--batching_parameters_file",
        default="",
        help="Text BatchingParameters (max_batch_size, batch_timeout_micros, ...).",
    )
    _add_bool(
        parser,
        "enable_per_model_batching_parameters",
        False,
        "Read batching_params.pbtxt from each SavedModel directory (with --enable_batching).",
    )
    parser.add_argument(
        "--monitoring_config_file",
        default="",
        help="Text MonitoringConfig; prometheus_config serves metrics on the REST port.",
    )
    _add_bool(
        parser,
        "enable_serialization_as_tensor_content",
        False,
        "gRPC answers carry tensor values in tensor_content instead of the typed fields.",
    )
    _add_bool(parser, "enable_model_warmup", True, "Replay assets.extra warmup requests at load.")
    parser.add_argument(
        "--num_request_iterations_for_warmup",
        type=int,
        default=0,
        help="Times each warmup request is replayed (used when > 0).",
    )
    parser.add_argument(
        "--saved_model_tags", default="serve", help="Comma-separated MetaGraph tags. Default serve."
    )
    _add_bool(
        parser,
        "enable_signature_method_name_check",
        False,
        "Refuse Classify/Regress on signatures whose method_name is not the API's.",
    )
    parser.add_argument(
        "--tensorflow_session_config_file",
        default="",
        help="Text tf.compat.v1.ConfigProto every version's session runs with.",
    )
    for name in ("tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
                 "tensorflow_inter_op_parallelism"):
        parser.add_argument(
            f"--{name}",
            type=int,
            default=0,
            help="TensorFlow threads (0: auto). Session parallelism sets both.",
        )
    _add_bool(parser, "version", False, "Print the version and exit.")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on. Default 127.0.0.1.")
    parser.add_argument(
        "--max_body_bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"Largest request accepted (REST answers 413). Default {DEFAULT_MAX_BODY_BYTES}.",
    )
    parser.add_argument(
        "--max_concurrent_requests",
        type=int,
        default=DEFAULT_MAX_CONCURRENT_REQUESTS,
        help="Predict requests (REST and gRPC) executing at once. "
        f"Default {DEFAULT_MAX_CONCURRENT_REQUESTS}.",
    )
    parser.add_argument(
        "--max_queued_requests",
        type=int,
        default=DEFAULT_MAX_QUEUED_REQUESTS,
        help="Predict requests waiting for an execution slot; more are answered 429 / "
        f"RESOURCE_EXHAUSTED. Default {DEFAULT_MAX_QUEUED_REQUESTS}.",
    )
    ignored = parser.add_argument_group(
        "accepted for tensorflow_model_server compatibility and ignored (with a warning)"
    )
    for name, (kind, reason) in IGNORED_FLAGS.items():
        if kind is _parse_bool:
            ignored.add_argument(
                f"--{name}", type=_parse_bool, nargs="?", const=True, default=None,
                metavar="BOOL", help=f"Ignored: {reason}.",
            )
        else:
            ignored.add_argument(f"--{name}", type=kind, default=None, help=f"Ignored: {reason}.")
    return parser


def ignored_flag_warnings(args: argparse.Namespace) -> list[str]:
    """One warning per ignored tensorflow_model_server flag given on the command line."""
    return [
        f"--{name} is accepted for compatibility with tensorflow_model_server and ignored: {reason}"
        for name, (_, reason) in IGNORED_FLAGS.items()
        if getattr(args, name, None) is not None
    ]


def _read_text_proto(path: str, parse):
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ValueError(f"Cannot read {path}: {error}") from None
    return parse(text, path)


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Applies `--tensorflow_{intra,inter}_op_parallelism` (0 leaves TensorFlow's default).

    TensorFlow fixes its thread pools when it first runs an op; later calls that would change
    them are logged and ignored (as when a Server starts inside a process already using TF).
    """
    import tensorflow as tf

    for value, getter, setter, flag in (
        (intra_op, tf.config.threading.get_intra_op_parallelism_threads,
         tf.config.threading.set_intra_op_parallelism_threads, "tensorflow_intra_op_parallelism"),
        (inter_op, tf.config.threading.get_inter_op_parallelism_threads,
         tf.config.threading.set_inter_op_parallelism_threads, "tensorflow_inter_op_parallelism"),
    ):
        if value <= 0 or getter() == value:
            continue
        try:
            setter(value)
        except RuntimeError:
            logger.warning(
                "--%s=%d not applied: TensorFlow in this process is already running", flag, value
            )


def server_from_args(args: argparse.Namespace) -> Server:
    """A `Server` configured from `add_serve_arguments` flags.

    Raises:
        ValueError: a flag value or a file it names is invalid.
    """
    for warning in ignored_flag_warnings(args):
        logger.warning(warning)
    if args.port and args.rest_api_port and args.port == args.rest_api_port:
        raise ValueError(
            "--rest_api_port cannot be same as --port. Please use a different port for HTTP/REST API."
        )
    batching = None
    if args.enable_batching:
        from keras_dropout.serving.batching import BatchingOptions
        from keras_dropout.serving.config_protos import parse_batching_parameters

        if args.batching_parameters_file:
            parameters = _read_text_proto(args.batching_parameters_file, parse_batching_parameters)
            batching = BatchingOptions.from_proto(parameters)
        else:
            # TF Serving's defaults, and the name it gives its batch threads.
            batching = BatchingOptions(thread_pool_name="model_server_batch_threads")
    elif args.batching_parameters_file:
        raise ValueError(
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )
    monitoring_path = None
    if args.monitoring_config_file:
        from keras_dropout.serving.config_protos import parse_monitoring_config
        from keras_dropout.serving.monitoring import prometheus_path

        config = _read_text_proto(args.monitoring_config_file, parse_monitoring_config)
        monitoring_path = prometheus_path(config)
    session_threads = args.tensorflow_session_parallelism
    intra_op = args.tensorflow_intra_op_parallelism or session_threads
    inter_op = args.tensorflow_inter_op_parallelism or session_threads
    configure_tensorflow_threads(intra_op, inter_op)
    session_config = None
    if args.tensorflow_session_config_file:
        session_config = _read_text_proto(args.tensorflow_session_config_file, _parse_config_proto)
        # As TF Serving: the parallelism flags win over the file's thread counts.
        if intra_op:
            session_config.intra_op_parallelism_threads = intra_op
        if inter_op:
            session_config.inter_op_parallelism_threads = inter_op
    if batching is not None and args.max_concurrent_requests < batching.max_batch_size:
        logger.warning(
            "--max_concurrent_requests=%d admits fewer requests at once than max_batch_size=%d, "
            "so no batch holds more than %d requests; raise it to fill batches",
            args.max_concurrent_requests,
            batching.max_batch_size,
            args.max_concurrent_requests,
        )
    timeout_ms = args.rest_api_timeout_in_ms
    return Server(
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        model_config_file=args.model_config_file,
        port=args.port,
        rest_api_port=args.rest_api_port,
        host=args.host,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=timeout_ms / 1000 if timeout_ms > 0 else None,
        max_concurrent_requests=args.max_concurrent_requests,
        max_queued_requests=args.max_queued_requests,
        num_load_threads=max(1, args.num_load_threads),
        grpc_socket_path=args.grpc_socket_path or None,
        grpc_channel_arguments=parse_grpc_channel_arguments(args.grpc_channel_arguments),
        grpc_max_threads=args.grpc_max_threads,
        enable_grpc_healthcheck_service=args.enable_grpc_healthcheck_service,
        rest_api_num_threads=args.rest_api_num_threads,
        rest_api_enable_cors_support=args.rest_api_enable_cors_support,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        batching=batching,
        per_model_batching=args.enable_batching and args.enable_per_model_batching_parameters,
        monitoring_path=monitoring_path,
        tensor_content=args.enable_serialization_as_tensor_content,
        enable_model_warmup=args.enable_model_warmup,
        num_request_iterations_for_warmup=max(1, args.num_request_iterations_for_warmup),
        saved_model_tags=tuple(t.strip() for t in args.saved_model_tags.split(",") if t.strip()),
        enable_signature_method_name_check=args.enable_signature_method_name_check,
        session_config=session_config,
    )


def _parse_config_proto(text: str, source: str):
    import tensorflow as tf
    from google.protobuf import text_format

    config = tf.compat.v1.ConfigProto()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ValueError(
            f"{source}: Error parsing text-format tensorflow.ConfigProto: {error}"
        ) from None
    return config


def version_text() -> str:
    """What `--version` prints, in TF Serving's two lines."""
    from importlib.metadata import PackageNotFoundError, version

    import tensorflow as tf

    try:
        own = version("keras-dropout")
    except PackageNotFoundError:
        own = "unknown"
    return f"TensorFlow ModelServer: keras-dropout {own}\nTensorFlow Library: {tf.__version__}"


def serve_forever(args: argparse.Namespace) -> int:
    """Runs the server until SIGTERM or SIGINT, then stops gracefully; returns the exit code.

    Prints TF Serving's two start-up lines ("Running gRPC ModelServer at HOST:PORT ..." and
    "Exporting HTTP/REST API at:HOST:PORT ...") once both ports listen. Exit code 0 after a
    signal (or `--version`), 2 for bad flags or config, 1 when the server cannot start.
    """
    if getattr(args, "version", False):
        print(version_text())
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = server_from_args(args)
    except (ValueError, OSError) as error:
        print(f"keras-dropout serve: error: {error}", file=sys.stderr)
        return 2
    stop_requested = threading.Event()
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: stop_requested.set()) for sig in handled}
    try:
        try:
            server.start()
        except (OSError, RuntimeError) as error:
            print(f"keras-dropout serve: error: {error}", file=sys.stderr)
            return 1
        print(f"Running gRPC ModelServer at {server.grpc_target} ...", flush=True)
        if server.rest_url:
            print(f"Exporting HTTP/REST API at:{_host_port(server.host, server.rest_api_port)} ...", flush=True)
        while not stop_requested.wait(0.5):
            pass
        logger.info("Signal received: finishing in-flight requests, then exiting")
        server.stop(grace=SHUTDOWN_GRACE_S)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
