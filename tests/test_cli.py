"""The `keras-dropout` console script, run as a user runs it: in subprocesses.

Specification: DESIGN.md section 5 (CLI) and section 4 (`keras-dropout serve`'s TF Serving flags).
The tests run the installed console script (found next to `sys.executable`; failing that,
`python -m keras_dropout.cli`); the five subcommands' `--help` call its `main` in one interpreter.

Each run pays TensorFlow's import (seconds), so the runs that need nothing else (the `--help`
runs, a failing check, the demo) start together in the background at the first test that asks for them and go on
while the other tests run; each test then waits for its own run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("requests")
pytest.importorskip("tensorflow_serving")

import client_checks as checks  # noqa: E402

pytestmark = pytest.mark.tf_only

TIMEOUT_S = 300  # a run on a loaded 2-core machine; a hang still fails
SUBCOMMANDS = ("demo", "export", "check", "serve", "predict")
SERVE_FLAGS = (
    "--port",
    "--rest_api_port",
    "--model_name",
    "--model_base_path",
    "--model_config_file",
    "--file_system_poll_wait_seconds",
    "--host",
)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def keras_dropout_command():
    script = Path(sys.executable).parent / "keras-dropout"
    if script.exists():
        return [str(script)]
    found = shutil.which("keras-dropout")
    return [found] if found else [sys.executable, "-m", "keras_dropout.cli"]


class Run:
    """One `keras-dropout ARGS` run, started now and awaited with `result()`.

    Output goes to files, not pipes, so a chatty run never blocks on a full pipe.
    """

    def __init__(self, args, log_dir, name, command=None):
        self.args = [str(arg) for arg in args]
        self._result = None
        self._out = open(Path(log_dir) / f"{name}.out", "w+")
        self._err = open(Path(log_dir) / f"{name}.err", "w+")
        self.process = subprocess.Popen(
            (command or keras_dropout_command()) + self.args,
            stdout=self._out,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            env=ENV,
            cwd=log_dir,
        )

    def result(self, timeout=TIMEOUT_S):
        """The finished run's exit code and output (cached); fails the test past `timeout`."""
        if self._result is None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"ran past {timeout} s: " + describe(self._result))
            self._read()
        return self._result

    def _read(self):
        outputs = []
        for handle in (self._out, self._err):
            handle.seek(0)
            outputs.append(handle.read())
            handle.close()
        self._result = subprocess.CompletedProcess(self.args, self.process.returncode, *outputs)
        return self._result

    def kill(self):
        """Ends the run if it is still going, and keeps what it wrote."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._result is None:
            self._read()


def run(args, log_dir, name, timeout=TIMEOUT_S):
    """Runs `keras-dropout ARGS` to the end."""
    return Run(args, log_dir, name).result(timeout)


def describe(result):
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


# Every subcommand's --help in one interpreter (one TensorFlow import instead of five), through
# `main`, the function the console script calls: JSON lines {"command", "code", "stdout"}.
_HELPS = """
import contextlib, io, json, sys
from keras_dropout.cli import main
for command in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main([command, "--help"])
        except SystemExit as exit_:
            code = exit_.code
    print(json.dumps({"command": command, "code": code, "stdout": out.getvalue()}))
"""


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    """The independent slow runs, all started at once."""
    log_dir = tmp_path_factory.mktemp("background")
    demo_dir = log_dir / "demo"
    not_a_model = log_dir / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("not a SavedModel")
    runs = {
        "--help": Run(["--help"], log_dir, "help"),
        "subcommand helps": Run(
            SUBCOMMANDS, log_dir, "helps", command=[sys.executable, "-c", _HELPS]
        ),
        "check not a SavedModel": Run(["check", not_a_model], log_dir, "check-bad"),
        "demo": Run(["demo", "--output-dir", demo_dir, "--epochs", "10"], log_dir, "demo"),
    }
    runs["demo"].output_dir = demo_dir
    yield runs
    for started in runs.values():
        started.kill()


# ----------------------------------------------------------------------------- --help


def test_help_exits_zero_and_lists_every_subcommand(background):
    result = background["--help"].result()
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith("usage: keras-dropout")
    for command in SUBCOMMANDS:
        assert command in result.stdout, command


@pytest.fixture(scope="module")
def subcommand_helps(background):
    result = background["subcommand helps"].result()
    assert result.returncode == 0, describe(result)
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {answer["command"]: answer for answer in answers}


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_exits_zero(subcommand_helps, command):
    answer = subcommand_helps[command]
    assert answer["code"] == 0
    assert answer["stdout"].startswith(f"usage: keras-dropout {command}")


def test_serve_help_lists_tf_servings_flags(subcommand_helps):
    for flag in SERVE_FLAGS:
        assert flag in subcommand_helps["serve"]["stdout"], flag


# ----------------------------------------------------------------------------- export, check


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`keras-dropout export` run twice on a .keras classifier (BatchNormalization, MCDropout)."""
    root = tmp_path_factory.mktemp("export")
    model_file = root / "classifier.keras"
    checks.build_classifier(0).save(model_file)
    base = root / "models" / "classifier"
    first = run(["export", model_file, base], root, "export-1")
    second = run(["export", model_file, base], root, "export-2")
    return {"root": root, "base": base, "first": first, "second": second}


def test_export_prints_the_version_path_and_creates_version_1(exported):
    first, base = exported["first"], exported["base"]
    assert first.returncode == 0, describe(first)
    assert first.stdout.strip().splitlines()[-1] == str(base / "1")
    assert (base / "1" / "saved_model.pb").is_file()


def test_second_export_creates_version_2(exported):
    second, base = exported["second"], exported["base"]
    assert second.returncode == 0, describe(second)
    assert second.stdout.strip().splitlines()[-1] == str(base / "2")
    assert sorted(os.listdir(base)) == ["1", "2"]  # no staging folder left behind


def test_check_of_an_export_exits_zero_and_reports_no_problems(exported):
    result = run(["check", exported["base"] / "1"], exported["root"], "check")
    assert result.returncode == 0, describe(result)
    assert "no problems" in result.stdout


def test_check_of_a_folder_that_is_not_a_saved_model_fails_with_a_message(background):
    result = background["check not a SavedModel"].result()
    assert result.returncode != 0
    assert "SavedModel" in result.stdout + result.stderr


# ----------------------------------------------------------------------------- serve, predict


def test_serve_answers_predict_over_rest_and_grpc_then_exits_zero_on_sigterm(exported, tmp_path):
    base = exported["base"]
    grpc_port, rest_port = checks.free_port(), checks.free_port()
    server = Run(
        ["serve", f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--model_name=m",
         f"--model_base_path={base}"],
        tmp_path,
        "serve",
    )
    try:
        rest_url = f"http://127.0.0.1:{rest_port}"
        if not checks.wait_for_rest_available(server.process, rest_url, "m"):
            server.kill()
            pytest.fail("the server did not become AVAILABLE\n" + describe(server.result()))

        # Integer-valued JSON for a float32 input: REST casts it server-side, gRPC in the CLI.
        inputs = json.dumps({"x": [[0, 1, 2, 3], [-1, 0, 1, -2]], "num_samples": 16, "seed": 3})
        query = ["predict", "--model_name", "m", "--signature_name", "mc_sample", "--inputs", inputs]
        clients = {
            "rest": Run(query + ["--rest_url", rest_url], tmp_path, "predict-rest"),
            "grpc": Run(query + ["--grpc_target", f"127.0.0.1:{grpc_port}"], tmp_path, "predict-grpc"),
        }
        answers = {}
        for transport, client in clients.items():
            result = client.result()
            assert result.returncode == 0, describe(result)
            answers[transport] = checks.as_float32(json.loads(result.stdout))
            assert set(answers[transport]) == set(checks.CLASSIFIER_MC_OUTPUTS)
            assert answers[transport]["mean"].shape == (2, checks.CLASSES)
            assert answers[transport]["variance"].shape == (2, checks.CLASSES)
        checks.assert_same_outputs(answers["rest"], answers["grpc"])  # one seed, one answer

        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        result = server.result(timeout=30)
        assert result.returncode == 0, describe(result)
        assert time.monotonic() - stopped < 15
        assert f"Exporting HTTP/REST API at:127.0.0.1:{rest_port}" in result.stdout
    finally:
        server.kill()


# ----------------------------------------------------------------------------- demo


def test_demo_runs_end_to_end(background):
    result = background["demo"].result()
    assert result.returncode == 0, describe(result)
    for step in range(1, 7):
        assert f"[{step}/6]" in result.stdout, step
    assert (background["demo"].output_dir / "demo_uncertainty.png").is_file()
    for line in ("REST serving_default", "REST mc ", "REST mc_sample", "REST moments", "gRPC serving_default",
                 "gRPC mc ", "gRPC mc_sample", "gRPC moments"):
        assert line in result.stdout, line
    assert "mean=" in result.stdout and "mutual_information=" in result.stdout
