"""Servable management and execution, as TF Serving does them.

- `ModelConfig` / `model_configs`: which models to serve (name -> base path, version policy,
  version labels), from flags or a TF Serving `models.config` text proto.
- `ModelManager`: polls each base path every `file_system_poll_wait_seconds`, loads the versions
  the policy wants in the background, serves the latest available one by default and unloads
  versions no longer wanted, keeping TF Serving's availability-preserving order (an old version
  is unloaded only once a wanted one is available, so a version that fails to load never
  replaces a good one). Status states are TF Serving's: LOADING, AVAILABLE, UNLOADING, END.
  A failed load shows at once as END with its error. While that version stays wanted, it is
  loaded again as soon as its directory changes (files added, grown or rewritten): a version
  written in place rather than renamed into place (`tf.saved_model.save(m, "base/3")`, `cp -r`)
  fails while half-written and loads once complete. TF Serving gets there by retrying a failed
  load up to `--max_num_load_retries` (5) times a `--load_retry_interval_micros` (1 min) apart,
  showing LOADING meanwhile; retrying on change reports the error without a 5-minute delay and
  never reloads a directory that cannot have been fixed.
- `Servable`: one loaded version. Runs a named signature from the SavedModel's SignatureDefs
  as TF Serving does: the MetaGraph is loaded into a `tf.compat.v1.Session` (TF1 and
  `tf.saved_model.save` SavedModels alike) and a request feeds its tensors to the signature's
  input tensors by name, checked for dtype only. Like TF Serving it does not hold inputs to the
  SignatureDef's static shapes (`{"instances": [1.0, 2.0, 5.0]}` to half_plus_two's [-1, 1]
  input answers three values); the graph's own ops refuse what they cannot compute. It knows
  nothing about the model beyond the SignatureDefs.

Protocol code (REST, gRPC) talks to this module only through `ModelManager.servable`,
`ModelManager.status`, `Servable.input_specs`, `Servable.run`, `Servable.signature_def` and
`Servable.signature_def_map`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import importlib
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from keras_dropout import _keras_internals
from keras_dropout.serving import tensors
from keras_dropout.serving.errors import CODES, ServingError, from_tf_error
from keras_dropout.serving.version_policy import VersionState, next_action
from keras_dropout.serving.warmup import replay_warmup

logger = logging.getLogger("keras_dropout.serving")

DEFAULT_SIGNATURE = "serving_default"
# The SignatureDef tf.saved_model.save adds for its initializers; not a servable signature.
_INIT_OP_SIGNATURE = "__saved_model_init_op"
SERVE_TAG = "serve"

_VERSION_DIR = re.compile(r"\d+")
_MAX_VERSION = 2**63 - 1


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model, as a `ModelConfig` entry of TF Serving's `models.config`.

    Args:
        name: the model name clients use (`/v1/models/NAME`, `ModelSpec.name`).
        base_path: directory holding integer-named version directories.
        version_policy: "latest" (the `num_versions` largest), "all", or "specific"
            (`versions` only).
        num_versions: for "latest".
        versions: for "specific".
        version_labels: label -> version, for `/labels/LABEL` and `ModelSpec.version_label`.
    """

    name: str
    base_path: str
    version_policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.version_policy not in ("latest", "all", "specific"):
            raise ValueError(
                "Invalid value received for argument `version_policy`. Expected one of "
                f"'latest', 'all', 'specific'. Received: version_policy={self.version_policy!r}"
            )
        if self.version_policy == "latest" and self.num_versions < 1:
            raise ValueError(
                "Invalid value received for argument `num_versions`. Expected an integer >= 1. "
                f"Received: num_versions={self.num_versions}"
            )
        if self.version_policy == "specific" and not self.versions:
            raise ValueError(
                f"Model {self.name!r}: version_policy 'specific' needs at least one version. "
                f"Received: versions={self.versions}"
            )

    def select(self, available: set[int]) -> set[int]:
        """The versions this policy wants loaded, out of those on disk."""
        if self.version_policy == "all":
            return set(available)
        if self.version_policy == "specific":
            return available & set(self.versions)
        return set(sorted(available)[-self.num_versions :])


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def parse_model_config(text: str, source: str = "<model config>") -> list[ModelConfig]:
    """Parses a TF Serving `ModelServerConfig` text proto into `ModelConfig`s.

    Raises:
        ValueError: unparsable text, a custom_model_config, a platform other than
            "tensorflow", duplicate or empty names, or a missing base_path.
    """
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        # TF Serving's words (protobuf's text-format parser), then where it failed.
        raise ValueError(
            f"{source}: Error parsing text-format tensorflow.serving.ModelServerConfig: {error}"
        ) from None
    return model_configs_from_proto(config, source)


def model_configs_from_proto(config, source: str = "<model config>") -> list[ModelConfig]:
    """A `ModelServerConfig` message's models as `ModelConfig`s (see `parse_model_config`)."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ValueError(f"{source}: custom_model_config is not supported; use model_config_list")
    models = []
    for entry in config.model_config_list.config:
        if not entry.name:
            raise ValueError(f"{source}: every config needs a name")
        if not entry.base_path:
            raise ValueError(f"{source}: model {entry.name!r} has no base_path")
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(
                f"{source}: model {entry.name!r}: model_platform {entry.model_platform!r} is not "
                "supported (only 'tensorflow')"
            )
        if any(model.name == entry.name for model in models):
            raise ValueError(f"{source}: model {entry.name!r} is configured twice")
        policy = entry.model_version_policy
        choice = policy.WhichOneof("policy_choice") or "latest"
        models.append(
            ModelConfig(
                name=entry.name,
                base_path=_absolute(entry.base_path),
                version_policy=choice,
                num_versions=policy.latest.num_versions or 1,
                versions=tuple(policy.specific.versions),
                version_labels=dict(entry.version_labels),
            )
        )
    if not models:
        raise ValueError(f"{source}: no models configured")
    return models


def model_configs(
    model_name: str | None = None,
    model_base_path: str | None = None,
    model_config_file: str | None = None,
) -> list[ModelConfig]:
    """The models to serve, from TF Serving's flags.

    `model_config_file` wins over `model_name`/`model_base_path`, as in TF Serving; without it a
    single model named `model_name` (default "default") is served from `model_base_path`.
    """
    if model_config_file:
        if model_base_path:
            logger.warning("--model_config_file is given; ignoring --model_base_path")
        with open(model_config_file, encoding="utf-8") as handle:
            return parse_model_config(handle.read(), model_config_file)
    if not model_base_path:
        raise ValueError("Either --model_base_path or --model_config_file must be given")
    return [ModelConfig(name=model_name or "default", base_path=_absolute(model_base_path))]


# ----------------------------------------------------------------------------- execution


class Servable:
    """One loaded version of a model: its SignatureDefs and the session that runs them.

    Built by `load_servable`. Thread-safe: a `tf.compat.v1.Session` runs concurrent calls.

    Args:
        name: the model's name.
        version: the version number.
        path: the version directory.
        session: a `tf.compat.v1.Session` holding the loaded MetaGraph.
        signature_defs: the MetaGraph's SignatureDefs by name.
    """

    def __init__(self, name: str, version: int, path: str, session, signature_defs: Mapping):
        self.name = name
        self.version = version
        self.path = path
        self._session = session
        self._signature_defs = dict(signature_defs)
        self._specs: dict[str, dict[str, tf.TensorSpec]] = {}
        self._callables: dict[tuple, Callable] = {}
        self._lock = threading.Lock()
        self._batcher = None
        # With batching: requests inside `run`, and whether the version is being unloaded.
        self._in_flight = 0
        self._closing = False

    @property
    def signature_names(self) -> list[str]:
        """Names of the signatures that can be run (no `__saved_model_init_op`)."""
        return sorted(name for name in self._signature_defs if name != _INIT_OP_SIGNATURE)

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        """All SignatureDefs, as TF Serving's GetModelMetadata returns them."""
        result = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in self._signature_defs.items():
            result.signature_def[name].CopyFrom(signature_def)
        return result

    def signature_def(self, signature_name: str):
        """The MetaGraph's SignatureDef named `signature_name` ("" is not resolved), or None.

        Read-only: Classify/Regress validate a signature's method, inputs and outputs from it
        before running it. Unlike `resolve_signature`, an absent name is not an error here,
        since each API reports it in its own words.
        """
        return self._signature_defs.get(signature_name)

    def resolve_signature(self, signature_name: str | None) -> str:
        """The signature's name ("" or None means serving_default); FAILED_PRECONDITION if absent."""
        name = signature_name or DEFAULT_SIGNATURE
        if name not in self._signature_defs or name == _INIT_OP_SIGNATURE:
            raise ServingError(
                "FAILED_PRECONDITION",
                f'Serving signature key "{name}" not found. Signatures of model {self.name} '
                f"version {self.version}: {', '.join(self.signature_names) or '(none)'}",
            )
        return name

    def input_specs(self, signature_name: str | None) -> dict[str, tf.TensorSpec]:
        """The signature's inputs as `tf.TensorSpec`s keyed by input name."""
        name = self.resolve_signature(signature_name)
        with self._lock:
            if name not in self._specs:
                specs = {}
                for key, info in self._signature_defs[name].inputs.items():
                    if info.WhichOneof("encoding") != "name":
                        raise ServingError(
                            "UNIMPLEMENTED",
                            f"Signature {name!r} input {key!r} is a sparse or composite tensor; "
                            "only dense inputs are supported",
                        )
                    specs[key] = tf.TensorSpec(
                        tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype), name=key
                    )
                self._specs[name] = specs
            return self._specs[name]

    def run(
        self,
        signature_name: str | None,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Runs a signature on NumPy inputs and returns its outputs as NumPy arrays.

        With batching enabled (`enable_batching`), the call waits for concurrent calls to the
        same signature to be merged with it, and returns its own rows.

        Args:
            signature_name: "" or None for serving_default.
            inputs: exactly the signature's inputs, each with its dtype (shapes are the graph's
                business, as in TF Serving).
            output_filter: output names to return (all when empty), as in PredictRequest.

        Raises:
            ServingError: FAILED_PRECONDITION for an unknown signature; INVALID_ARGUMENT for
                missing/extra inputs, a wrong dtype, a bad output filter, or an in-graph
                assertion failing; the TF error's own code for other failures in the graph.
        """
        name = self.resolve_signature(signature_name)
        specs = self.input_specs(name)
        tensors.check_input_names(inputs.keys(), specs)
        outputs = self._signature_defs[name].outputs
        wanted = list(output_filter)
        for alias in wanted:
            if alias not in outputs:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"output tensor alias not found in signature: {alias} Outputs expected to be "
                    f"in the set {{{','.join(sorted(outputs))}}}.",
                )
        if len(set(wanted)) != len(wanted):
            duplicate = next(alias for alias in wanted if wanted.count(alias) > 1)
            raise ServingError("INVALID_ARGUMENT", f"duplicate output tensor alias: {duplicate}")
        for index, key in enumerate(sorted(inputs)):
            given = tensors.dtype_of(np.asarray(inputs[key]))
            if given != specs[key].dtype:
                # TF Serving's Session::Run words this; arguments are fed in name order.
                given_name = tensors.tf_type_name(given) if given is not None else inputs[key].dtype
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Expects arg[{index}] to be {tensors.tf_type_name(specs[key].dtype)} but "
                    f"{given_name} is provided (input '{key}')",
                )
        with self._lock:
            # A request that got this version just before it was unloaded runs on its own: the
            # batch threads are stopping, the session is still there (as TF Serving's handles).
            batcher = None if self._closing else self._batcher
            if batcher is not None:
                self._in_flight += 1
        if batcher is None:
            return self._execute(name, inputs, tuple(wanted))
        try:
            return batcher.run(name, dict(inputs), tuple(wanted))
        finally:
            with self._lock:
                self._in_flight -= 1
                last = self._closing and not self._in_flight
            if last:
                self._stop_batching()

    def _callable(self, name: str, feeds: tuple[str, ...], fetches: tuple[str, ...]):
        key = (name, feeds, fetches)
        with self._lock:
            function = self._callables.get(key)
            if function is None:
                signature = self._signature_defs[name]
                function = _keras_internals.session_callable(
                    self._session,
                    [signature.inputs[alias].name for alias in feeds],
                    [signature.outputs[alias].name for alias in fetches],
                )
                self._callables[key] = function
            return function

    def _execute(
        self, name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """One session call of a checked signature (a merged batch, with batching)."""
        feeds = tuple(sorted(inputs))
        fetches = tuple(sorted(output_filter or self._signature_defs[name].outputs))
        function = self._callable(name, feeds, fetches)
        try:
            values = function(*(np.asarray(inputs[alias]) for alias in feeds))
        except tf.errors.OpError as error:
            raise from_tf_error(error) from None
        return {alias: np.asarray(value) for alias, value in zip(fetches, values)}

    def enable_batching(self, options, on_batch: Callable[[str, int], None] | None = None) -> None:
        """Merges concurrent `run` calls from now on (TF Serving's `--enable_batching`).

        Args:
            options: a `batching.BatchingOptions`.
            on_batch: called with (signature name, rows) for every merged call (metrics).
        """
        from keras_dropout.serving.batching import Batcher

        def execute(name, inputs, output_filter):
            if on_batch is not None:
                on_batch(name, len(next(iter(inputs.values()))) if inputs else 0)
            return self._execute(name, inputs, output_filter)

        self._batcher = Batcher(options, execute)

    def close(self) -> None:
        """Stops the batching threads, if any, once the requests in flight have their answers
        (the version is being unloaded).

        The session itself closes when the last request lets go of the servable.
        """
        with self._lock:
            self._closing = True
            idle = not self._in_flight
        if idle:
            self._stop_batching()

    def _stop_batching(self) -> None:
        with self._lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:
            # Dropping it also breaks servable -> batcher -> run -> servable, so the session is
            # freed by reference counting, not by a later garbage collection.
            batcher.close()


# Python packages whose import registers TensorFlow ops SavedModels use; TF Serving links them in.
OP_LIBRARIES = ("tensorflow_text",)


@functools.cache
def _load_op_libraries() -> None:
    for module in OP_LIBRARIES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def load_servable(
    name: str,
    version: int,
    path: str,
    *,
    warmup: bool = True,
    warmup_iterations: int = 1,
    tags: Sequence[str] = (SERVE_TAG,),
    session_config=None,
    batching=None,
    on_batch: Callable[[str, int], None] | None = None,
) -> Servable:
    """Loads one version directory (a SavedModel) into a session and replays its warmup file.

    Args:
        name: the model's name.
        version: the version number.
        path: the version directory.
        warmup: replay `assets.extra/tf_serving_warmup_requests` (`--enable_model_warmup`).
        warmup_iterations: times each warmup record runs (`--num_request_iterations_for_warmup`).
        tags: the MetaGraph's tag set (`--saved_model_tags`).
        session_config: a `tf.compat.v1.ConfigProto` for the session
            (`--tensorflow_session_config_file`).
        batching: a `batching.BatchingOptions` to batch the version's requests with (enabled
            before warmup, so warmup runs through it as TF Serving's does).
        on_batch: see `Servable.enable_batching`.

    Raises:
        ServingError: NOT_FOUND (no saved_model.pb / no MetaGraph with `tags`), DATA_LOSS
            (unparsable), or the load's / warmup's own error.
    """
    tags = sorted(set(tags))
    if not any(
        tf.io.gfile.exists(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")
    ):
        raise ServingError(
            "NOT_FOUND",
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}",
        )
    try:
        saved_model = _keras_internals.parse_saved_model(path)
    except Exception as error:  # OSError wrapping a protobuf DecodeError, mostly.
        raise ServingError("DATA_LOSS", f"Cannot read the SavedModel at {path}: {error}") from None
    if not any(sorted(set(m.meta_info_def.tags)) == tags for m in saved_model.meta_graphs):
        raise ServingError(
            "NOT_FOUND",
            f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. "
            f"To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
            f"`saved_model_cli show --dir {path}`",
        )
    _load_op_libraries()
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=session_config)
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, tags, path)
    except tf.errors.OpError as error:
        session.close()
        raise from_tf_error(error) from None
    except Exception as error:
        session.close()
        raise ServingError(
            "INTERNAL", f"Failed to load the SavedModel at {path}: {type(error).__name__}: {error}"
        ) from None
    graph.finalize()  # Requests only run it; nothing may add to it.
    servable = Servable(name, version, path, session, meta_graph.signature_def)
    if batching is not None:
        servable.enable_batching(batching, on_batch)
    if warmup:
        try:
            replayed = replay_warmup(servable, warmup_iterations)
        except BaseException:
            servable.close()
            raise
        if replayed:
            logger.info("Replayed %d warmup requests for %s", replayed, path)
    return servable


# ----------------------------------------------------------------------------- management


@dataclasses.dataclass
class _Version:
    version: int
    # The directory's own name: TF Serving reads "00000123" as version 123.
    directory: str
    state: str = "NEW"
    error_code: str = "OK"
    error_message: str = ""
    aspired: bool = True
    servable: Servable | None = None
    # A failed version is retried after it has left the aspired set (as TF Serving forgets
    # errored servables that are no longer aspired), or once its directory has changed.
    retry: bool = False
    # The directory as the failed load found it (see `_directory_fingerprint`).
    fingerprint: tuple | None = None


@dataclasses.dataclass
class _Model:
    config: ModelConfig
    versions: dict[int, _Version] = dataclasses.field(default_factory=dict)
    poll_error: str | None = None
    # Dropped from the config by a reload: every version stops being aspired.
    removed: bool = False


_WARNED_DUPLICATES: set[str] = set()


def list_versions(base_path: str) -> dict[int, str]:
    """Version number -> directory name for the integer-named subdirectories of `base_path`.

    Anything else is ignored, as by TF Serving; zero-padded names count ("00000123" is version
    123). When two names give one number, the first in sorted order wins.
    """
    if not tf.io.gfile.isdir(base_path):
        raise ServingError("NOT_FOUND", f"Could not find base path {base_path}")
    versions: dict[int, str] = {}
    for entry in sorted(tf.io.gfile.listdir(base_path)):
        entry = entry.rstrip("/")
        if not _VERSION_DIR.fullmatch(entry) or int(entry) > _MAX_VERSION:
            continue
        if int(entry) in versions:
            duplicate = os.path.join(base_path, entry)
            if duplicate not in _WARNED_DUPLICATES:  # Said once, not every poll.
                _WARNED_DUPLICATES.add(duplicate)
                logger.warning(
                    "%s: directories %s and %s both hold version %d; serving %s",
                    base_path, versions[int(entry)], entry, int(entry), versions[int(entry)],
                )
            continue
        if tf.io.gfile.isdir(os.path.join(base_path, entry)):
            versions[int(entry)] = entry
    return versions


def _directory_fingerprint(path: str) -> tuple | None:
    """Every file under `path` with its size and modification time; None when unreadable.

    Taken before a load, so a writer still at work when the load fails changes it.
    """
    entries = []
    try:
        for root, _, files in tf.io.gfile.walk(path):
            for name in files:
                file_path = os.path.join(root, name)
                stat = tf.io.gfile.stat(file_path)
                entries.append((os.path.relpath(file_path, path), stat.length, stat.mtime_nsec))
    except (tf.errors.OpError, OSError):
        return None
    return tuple(sorted(entries))


class ModelManager:
    """Keeps the wanted versions of each configured model loaded, and hands them out.

    Which version to load or unload next is `version_policy.next_action`, a pure function of
    the versions' states; this class does the I/O around it (polling, loading in threads).

    Args:
        configs: the models (see `model_configs`).
        file_system_poll_wait_seconds: seconds between polls of the base paths; <= 0 polls
            once, at `start`.
        num_load_threads: versions loaded in parallel.
        loader: `(name, version, path) -> Servable`; `load_servable` by default.

    Example:
        manager = ModelManager(model_configs("demo", "/models/demo"))
        manager.start()
        servable = manager.servable("demo")          # latest available version
        outputs = servable.run("mc", {"x": x})
        manager.stop()
    """

    def __init__(
        self,
        configs: Sequence[ModelConfig],
        *,
        file_system_poll_wait_seconds: float = 1.0,
        num_load_threads: int = 1,
        loader: Callable[[str, int, str], Servable] = load_servable,
    ):
        self._models = self._check_configs(configs)
        self.poll_wait_seconds = file_system_poll_wait_seconds
        self._loader = loader
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, num_load_threads), thread_name_prefix="kd-model-loader"
        )
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._started = False
        self._stopped = False

    @staticmethod
    def _check_configs(configs: Sequence[ModelConfig]) -> dict[str, _Model]:
        if not configs:
            raise ValueError("Invalid value received for argument `configs`: no models given")
        models = {config.name: _Model(config) for config in configs}
        if len(models) != len(configs):
            raise ValueError("Invalid value received for argument `configs`: duplicate model names")
        return models

    @property
    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(name for name, model in self._models.items() if not model.removed)

    # -- lifecycle

    def start(self, wait: bool = True, timeout: float | None = None) -> None:
        """Polls once, optionally waits for those loads to finish, then polls in the background."""
        if self._stopped:
            raise RuntimeError("A stopped ModelManager cannot be restarted")
        if self._started:
            return
        self._started = True
        self.poll()
        if wait:
            self.wait_until_idle(timeout)
        if self.poll_wait_seconds > 0:
            self._poller = threading.Thread(
                target=self._poll_loop, name="kd-model-poller", daemon=True
            )
            self._poller.start()

    def stop(self) -> None:
        """Stops polling and loading and drops every loaded version (in-flight calls finish)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        self._executor.shutdown(wait=False, cancel_futures=True)
        unloaded = []
        with self._lock:
            self._stopped = True
            for model in self._models.values():
                for entry in model.versions.values():
                    if entry.state in ("AVAILABLE", "LOADING", "NEW"):
                        unloaded.append(entry.servable)
                        entry.state, entry.servable = "END", None
            self._changed.notify_all()
        for servable in unloaded:
            if servable is not None:
                servable.close()

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Blocks until no version is waiting to load or LOADING; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not any(
                    entry.state in ("NEW", "LOADING")
                    for model in self._models.values()
                    for entry in model.versions.values()
                ),
                timeout,
            )

    def reconfigure(self, configs: Sequence[ModelConfig]) -> None:
        """Serves `configs` from now on, as TF Serving's config reload does.

        New models start loading, models no longer configured are unloaded, and changed
        policies and labels of the others apply at once (then the base paths are polled).
        """
        new = self._check_configs(configs)
        with self._lock:
            for name, model in self._models.items():
                if name not in new:
                    if not model.removed:
                        logger.info("Model %s is no longer configured; unloading it", name)
                    model.removed = True
            for name, fresh in new.items():
                model = self._models.get(name)
                if model is None:
                    self._models[name] = fresh
                else:
                    model.config, model.removed = fresh.config, False
        self.poll()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll()
            except Exception:  # A poll must never kill the poller.
                logger.exception("Polling the model base paths failed")

    # -- polling, loading, unloading

    def poll(self) -> None:
        """Lists every base path once, then loads and unloads as the version policy says."""
        with self._lock:
            models = list(self._models.values())
        for model in models:
            self._poll_model(model)

    def _poll_model(self, model: _Model) -> None:
        config = model.config
        if model.removed:
            on_disk: dict[int, str] = {}
        else:
            try:
                on_disk = list_versions(config.base_path)
            except (ServingError, tf.errors.OpError, OSError) as error:
                # As TF Serving: a missing base path leaves the served versions alone.
                if model.poll_error != str(error):  # Said once, not every poll.
                    logger.warning("Model %s: %s", config.name, error)
                model.poll_error = str(error)
                return
            model.poll_error = None
        aspired = config.select(set(on_disk))
        with self._lock:
            if self._stopped:
                return
            for version, entry in model.versions.items():
                entry.aspired = version in aspired
                if entry.error_code != "OK" and not entry.aspired:
                    entry.retry = True
            failed = [
                entry
                for entry in model.versions.values()
                if entry.aspired and entry.state == "END" and entry.error_code != "OK"
            ]
        # Outside the lock: listing a directory may be slow (object stores).
        changed = set()
        for entry in failed:
            fingerprint = _directory_fingerprint(os.path.join(config.base_path, entry.directory))
            if fingerprint is not None and fingerprint != entry.fingerprint:
                changed.add(id(entry))
        with self._lock:
            if self._stopped:
                return
            for version in aspired:
                entry = model.versions.get(version)
                if entry is None or (
                    entry.state == "END"
                    and (entry.error_code == "OK" or entry.retry or id(entry) in changed)
                ):
                    if entry is not None and id(entry) in changed:
                        logger.info(
                            "Version %d of %s changed since its failed load; loading it again",
                            version,
                            config.name,
                        )
                    model.versions[version] = _Version(version, on_disk[version])
        self._act(model)

    def _act(self, model: _Model) -> None:
        """Carries out the version policy's actions until it has none left."""
        config = model.config
        # A model dropped from the config keeps nothing (TF Serving reads the current config).
        keep = (
            set(config.versions)
            if config.version_policy == "specific" and not model.removed
            else set()
        )
        to_load, unloaded = [], []
        with self._lock:
            while not self._stopped:
                action = next_action(
                    [VersionState(e.version, e.state, e.aspired) for e in model.versions.values()],
                    keep=keep,
                )
                if action is None:
                    break
                entry = model.versions[action.version]
                if action.kind == "load":
                    entry.state = "LOADING"
                    to_load.append(entry)
                    continue
                entry.state = "UNLOADING"
                unloaded.append(entry.servable)
                entry.servable = None
                entry.state = "END"
                logger.info(
                    "Unloaded servable version {name: %s version: %d}", config.name, entry.version
                )
                self._changed.notify_all()
        for servable in unloaded:
            if servable is not None:
                servable.close()
        for entry in to_load:
            logger.info("Loading servable: {name: %s version: %d}", config.name, entry.version)
            try:
                self._executor.submit(self._load, model, entry)
            except RuntimeError:  # stop() shut the loader down meanwhile.
                return

    def _load(self, model: _Model, entry: _Version) -> None:
        config = model.config
        path = os.path.join(config.base_path, entry.directory)
        fingerprint = _directory_fingerprint(path)
        servable, error = None, None
        try:
            servable = self._loader(config.name, entry.version, path)
        except ServingError as failure:
            error = (failure.code, failure.message)
        except Exception as failure:  # A broken loader reports, never kills the manager.
            logger.exception("Loading %s version %d crashed", config.name, entry.version)
            error = ("UNKNOWN", f"{type(failure).__name__}: {failure}")
        with self._lock:
            current = model.versions.get(entry.version)
            discarded = self._stopped or current is not entry or entry.state != "LOADING"
            if not discarded:
                self._finish_load(model, entry, servable, error, fingerprint)
        if discarded:
            if servable is not None:  # Stopped or superseded while it loaded.
                servable.close()
            return
        self._act(model)

    def _finish_load(self, model, entry, servable, error, fingerprint) -> None:
        """Records a load's outcome (under the lock)."""
        name = model.config.name
        if error is None:
            entry.state, entry.servable = "AVAILABLE", servable
            logger.info(
                "Successfully loaded servable version {name: %s version: %d}", name, entry.version
            )
        else:
            entry.state = "END"
            entry.error_code, entry.error_message = error
            entry.fingerprint = fingerprint
            logger.error(
                "Loading servable: {name: %s version: %d} failed: %s: %s",
                name,
                entry.version,
                *error,
            )
        self._changed.notify_all()

    # -- queries

    def _model(self, name: str) -> _Model | None:
        model = self._models.get(name)
        return None if model is None or model.removed else model

    def _resolve_label(self, model: _Model | None, label: str) -> int:
        if model is None or label not in model.config.version_labels:
            raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
        return model.config.version_labels[label]

    def servable(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> Servable:
        """The loaded version asked for: `version`, `label`'s version, or the latest available.

        Raises:
            ServingError: NOT_FOUND when that version (or any) is not available;
                INVALID_ARGUMENT for an empty name, an unknown label or both version and label.
        """
        if version is not None and label is not None:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Both model version ({version}) and model version label ({label}) cannot be supplied.",
            )
        if not name:  # TF Serving's ServerCore, for Predict, metadata and the rest alike.
            raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
        with self._lock:
            model = self._model(name)
            if label is not None:
                version = self._resolve_label(model, label)
            if version is None:
                available = [
                    e for e in (model.versions.values() if model else ()) if e.state == "AVAILABLE"
                ]
                if not available:
                    raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
                return max(available, key=lambda e: e.version).servable
            entry = model.versions.get(version) if model else None
            if entry is None or entry.state != "AVAILABLE":
                raise ServingError(
                    "NOT_FOUND", f"Servable not found for request: Specific({name}, {version})"
                )
            return entry.servable

    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """TF Serving's GetModelStatusResponse: every version seen, newest first, or just one.

        A failed load shows as state END with the load's error code and message; a version
        waiting for a load thread shows as START.
        """
        if version is not None and label is not None:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Both model version ({version}) and model version label ({label}) cannot be supplied.",
            )
        response = get_model_status_pb2.GetModelStatusResponse()
        with self._lock:
            model = self._model(name)
            if label is not None:
                version = self._resolve_label(model, label)
            versions = model.versions if model else {}
            if version is not None:
                if version not in versions:
                    raise ServingError(
                        "NOT_FOUND", f"Could not find version {version} of model {name}"
                    )
                entries = [versions[version]]
            else:
                if not versions:
                    raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
                entries = sorted(versions.values(), key=lambda e: e.version, reverse=True)
            for entry in entries:
                status = response.model_version_status.add()
                status.version = entry.version
                state = "START" if entry.state == "NEW" else entry.state
                status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
                status.status.SetInParent()  # TF Serving always reports it, OK included.
                status.status.error_code = CODES.index(entry.error_code)
                status.status.error_message = entry.error_message
        return response
