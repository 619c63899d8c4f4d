"""The CLI answers `--help`, `--version` and bad arguments without TensorFlow, Keras or Beam.

Each check runs a fresh interpreter in which importing tensorflow, keras, jax, apache_beam (and more) fails
(`sys.modules` entries set to None), so any import on the parsing path is an error, not a
slowdown to time.
"""

import subprocess
import sys

import pytest

POISON = (
    "import sys\n"
    "for name in ('tensorflow', 'keras', 'jax', 'tensorflow_serving', 'grpc', 'apache_beam', 'pyarrow'):\n"
    "    sys.modules[name] = None\n"
    "from keras_dropout.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)


def run_without_tensorflow(*argv):
    return subprocess.run(
        [sys.executable, "-c", POISON, *argv], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["serve", "--help"],
        ["export", "--help"],
        ["predict", "--help"],
        ["check", "--help"],
        ["score", "--help"],
    ],
)
def test_help_answers_without_tensorflow(argv):
    result = run_without_tensorflow(*argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: keras-dropout")


def test_version_answers_without_tensorflow():
    result = run_without_tensorflow("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("keras-dropout ")


def test_bad_arguments_answer_without_tensorflow():
    result = run_without_tensorflow("serve", "--port=notanumber")
    assert result.returncode == 2
    assert "invalid int value" in result.stderr
    assert "ModuleNotFoundError" not in result.stderr and "ImportError" not in result.stderr


def test_importing_the_package_loads_no_framework():
    code = (
        "import sys\n"
        "import keras_dropout, keras_dropout.serving\n"
        "loaded = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_names_load_on_first_use_and_layers_register_for_deserialization():
    code = (
        "import keras\n"
        "import keras_dropout as kd\n"
        "assert keras.saving.get_registered_object('keras_dropout>MCDropout') is kd.layers.MCDropout\n"
        "assert 'predict_mc' in dir(kd) and callable(kd.predict_mc)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_functions_named_like_their_modules_stay_functions_after_the_modules_load():
    code = (
        "import keras_dropout as kd\n"
        "import keras_dropout.sampling, keras_dropout.convert\n"
        "import keras_dropout.serving.export, keras_dropout.serving.check\n"
        "names = (kd.sampling, kd.convert, kd.serving.export, kd.serving.check)\n"
        "assert all(callable(f) and type(f).__name__ == 'function' for f in names), names\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
