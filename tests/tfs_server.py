"""Start and stop `keras-dropout serve` the way TF Serving's own tests start theirs.

TF Serving's `tensorflow_model_server_test_base.py` builds a `tensorflow_model_server` command
line per case (`RunServer`) and shares one server between the cases that build the same line.
Here `tfs_flags` builds that command line, and

- `ServerCache` runs each distinct command line once, in this process, through the parser of
  `keras-dropout serve` (`add_serve_arguments`) and `server_from_args`, so a flag the server
  does not take fails the case that needs it with argparse's own message;
- `ServerProcess` runs a command line as its own `python -m keras_dropout.cli serve` process, for
  the cases about the process itself: exit status and messages, a Unix socket, custom ops the
  test process must not have registered for the server;
- `half_plus_two_metadata` is the REST metadata TF Serving's tests expect of half_plus_two.

Both listen on free ports (`--port=0 --rest_api_port=0`, where TF Serving's tests pick unused
ports before starting). In-process servers leave out `--grpc_socket_path`, which TF Serving's
`RunServer` passes to every server: one fixed socket path cannot be shared by several servers of
one process, so only the case about the socket (a real process) passes it.
"""

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keras_dropout.serving.server import add_serve_arguments
from keras_dropout.serving.server import server_from_args

# TF Serving's test base: every server gets --rest_api_timeout_in_ms=5000.
HTTP_REST_TIMEOUT_MS = 5000
READY_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 120.0
_REPO_ROOT = Path(__file__).resolve().parents[1]
_GRPC_LINE = re.compile(r"Running gRPC ModelServer at (\S+) \.\.\.")
_REST_LINE = re.compile(r"Exporting HTTP/REST API at:(\S+) \.\.\.")


def tfs_flags(
    model_name=None,
    model_path=None,
    model_config_file=None,
    monitoring_config_file=None,
    batching_parameters_file=None,
    grpc_channel_arguments="",
    model_config_file_poll_period=None,
    grpc_socket_path=None,
):
    """TF Serving's `RunServer` command line (without the binary), on free ports.

    Args:
        model_name: `--model_name`, used with `model_path`.
        model_path: `--model_base_path`.
        model_config_file: `--model_config_file`; wins over the two above.
        monitoring_config_file: `--monitoring_config_file`.
        batching_parameters_file: adds `--enable_batching --batching_parameters_file=...`.
        grpc_channel_arguments: `--grpc_channel_arguments`, when not empty.
        model_config_file_poll_period: `--model_config_file_poll_wait_seconds`.
        grpc_socket_path: `--grpc_socket_path`.

    Returns:
        The flags, as a tuple of strings.

    Raises:
        ValueError: neither a model config file nor a model path is given.
    """
    flags = ["--port=0", "--rest_api_port=0", f"--rest_api_timeout_in_ms={HTTP_REST_TIMEOUT_MS}"]
    if grpc_socket_path:
        flags.append(f"--grpc_socket_path={grpc_socket_path}")
    if model_config_file:
        flags.append(f"--model_config_file={model_config_file}")
    elif model_path:
        flags += [f"--model_name={model_name}", f"--model_base_path={model_path}"]
    else:
        raise ValueError("Both model_config_file and model_path cannot be empty!")
    if monitoring_config_file:
        flags.append(f"--monitoring_config_file={monitoring_config_file}")
    if model_config_file_poll_period is not None:
        flags.append(f"--model_config_file_poll_wait_seconds={model_config_file_poll_period}")
    if batching_parameters_file:
        flags += ["--enable_batching", f"--batching_parameters_file={batching_parameters_file}"]
    if grpc_channel_arguments:
        flags.append(f"--grpc_channel_arguments={grpc_channel_arguments}")
    return tuple(flags)


def start_in_process(flags):
    """Parses `flags` as `keras-dropout serve` does and starts that server in this process.

    Args:
        flags: the command line after `serve`.

    Returns:
        The started `keras_dropout.serving.Server` (its models loaded).

    Raises:
        pytest.fail.Exception: the parser rejects the command line (its message included).
    """
    parser = add_serve_arguments(argparse.ArgumentParser(prog="keras-dropout serve"))
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            args = parser.parse_args(list(flags))
    except SystemExit:
        pytest.fail(
            "`keras-dropout serve` rejects TF Serving's command line "
            f"{' '.join(flags)!r}:\n{usage.getvalue()}",
            pytrace=False,
        )
    return server_from_args(args).start()


class ServerCache:
    """One in-process server per distinct command line, as `RunServer` keeps one per args key.

    A command line that failed to start fails every case asking for it again, without retrying.
    """

    def __init__(self):
        self._servers = {}
        self._failures = {}

    def get(self, flags):
        """The running server for `flags`, started on first use (see `start_in_process`)."""
        flags = tuple(flags)
        if flags in self._failures:
            pytest.fail(self._failures[flags], pytrace=False)
        if flags not in self._servers:
            try:
                self._servers[flags] = start_in_process(flags)
            except pytest.fail.Exception as failure:
                self._failures[flags] = str(failure)
                raise
            except Exception as error:
                self._failures[flags] = f"The server did not start: {type(error).__name__}: {error}"
                raise
        return self._servers[flags]

    def stop(self, flags):
        """Stops the server for `flags` (if it runs), so a later `get` starts a fresh one."""
        server = self._servers.pop(tuple(flags), None)
        if server is not None:
            server.stop(grace=1)

    def close(self):
        """Stops every server."""
        for flags in list(self._servers):
            self.stop(flags)


class ServerProcess:
    """`python -m keras_dropout.cli serve FLAGS` as a child process.

    Args:
        flags: the command line after `serve`.
        log_dir: where its stdout and stderr are written (`serve.out`, `serve.err`).
        env: extra environment variables.
    """

    def __init__(self, flags, log_dir, env=None):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.flags = tuple(flags)
        self._out_path = log_dir / "serve.out"
        self._err_path = log_dir / "serve.err"
        self.grpc_target = None
        self.rest_address = None
        with open(self._out_path, "wb") as out, open(self._err_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "keras_dropout.cli", "serve", *self.flags],
                cwd=_REPO_ROOT,
                stdout=out,
                stderr=err,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
            )

    @property
    def stdout(self) -> str:
        return self._out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err_path.read_text(errors="replace")

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        """Waits for TF Serving's start-up lines and reads the addresses from them.

        Returns:
            self, with `grpc_target` ("host:port") and `rest_address` ("host:port") set.

        Raises:
            AssertionError: the process exited, or the lines did not come within `timeout`.
        """
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while time.monotonic() < deadline:
            out = self.stdout
            grpc_line, rest_line = _GRPC_LINE.search(out), _REST_LINE.search(out)
            if grpc_line and rest_line:
                self.grpc_target, self.rest_address = grpc_line.group(1), rest_line.group(1)
                return self
            if self.process.poll() is not None:
                raise AssertionError(
                    f"`keras-dropout serve {' '.join(self.flags)}` exited with "
                    f"{self.process.returncode} before serving:\n{self.stderr[-4000:]}"
                )
            pause.wait(0.1)
        raise AssertionError(
            f"`keras-dropout serve {' '.join(self.flags)}` printed no start-up lines in "
            f"{timeout:.0f} s:\n{self.stderr[-4000:]}"
        )

    def wait_exit(self, timeout=EXIT_TIMEOUT_S):
        """Waits for the process to end on its own and returns its exit status."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"`keras-dropout serve {' '.join(self.flags)}` still ran after {timeout:.0f} s"
            ) from None

    def stop(self):
        """Kills the process, as TF Serving's RunServer does at exit, and waits for it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _tensor_info(name, dtype, *dims):
    return {
        "dtype": dtype,
        "tensor_shape": {
            "dim": [{"size": str(size), "name": ""} for size in dims],
            "unknown_rank": False,
        },
        "name": name,
    }


def _signature_def(inputs, outputs, method_name):
    return {"inputs": inputs, "outputs": outputs, "method_name": method_name, "defaults": {}}


def half_plus_two_metadata(model_name):
    """The REST metadata of `tfs_models.save_half_plus_two`'s version 123, served as `model_name`.

    TF Serving's tests compare against testdata/half_plus_two_model_metadata.json and
    testdata/saved_model_half_plus_two_2_versions_metadata.json. This is those files for the
    model tests/tfs_models.py rebuilds, which differs in the model and the protos only, not in
    what the server adds: the serialized-Example input `tf_example:0` has shape [-1]
    (saved_model_half_plus_two.py declares shape=[None]; the files come from older exports of
    unknown rank), there is no classify_x2_to_y3 (only in TensorFlow's
    cc/saved_model/testdata/half_plus_two, which the 2_versions file describes), and every
    SignatureDef prints `"defaults": {}` (a field today's SignatureDef has, printed as the
    2_versions file shows).

    Args:
        model_name: the name in `model_spec`.

    Returns:
        The parsed JSON body of `GET /v1/models/NAME/metadata`.
    """
    examples = {"inputs": _tensor_info("tf_example:0", "DT_STRING", -1)}
    regress, classify = "tensorflow/serving/regress", "tensorflow/serving/classify"
    return {
        "model_spec": {"name": model_name, "signature_name": "", "version": "123"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "regress_x2_to_y3": _signature_def(
                        {"inputs": _tensor_info("x2:0", "DT_FLOAT", -1, 1)},
                        {"outputs": _tensor_info("y3:0", "DT_FLOAT", -1, 1)},
                        regress,
                    ),
                    "serving_default": _signature_def(
                        {"x": _tensor_info("x:0", "DT_FLOAT", -1, 1)},
                        {"y": _tensor_info("y:0", "DT_FLOAT", -1, 1)},
                        "tensorflow/serving/predict",
                    ),
                    "classify_x_to_y": _signature_def(
                        examples, {"scores": _tensor_info("y:0", "DT_FLOAT", -1, 1)}, classify
                    ),
                    "regress_x_to_y2": _signature_def(
                        examples, {"outputs": _tensor_info("y2:0", "DT_FLOAT", -1, 1)}, regress
                    ),
                    "regress_x_to_y": _signature_def(
                        examples, {"outputs": _tensor_info("y:0", "DT_FLOAT", -1, 1)}, regress
                    ),
                }
            }
        },
    }
