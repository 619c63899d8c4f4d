"""`kd.serving.check`: what a real TensorFlow Serving would trip on in a SavedModel.

Specification: DESIGN.md sections 4 ("Serving") and 6 ("TF Serving facts").

Each bad SavedModel is a small `tf.Module` saved with one named signature and
one defect; every problem must name the signature and say what is wrong.
"""

import os
import shutil

import numpy as np
import pytest

import keras

import keras_dropout as kd

pytestmark = [
    pytest.mark.tf_only,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="serving needs the TensorFlow backend"
    ),
]

import tensorflow as tf  # noqa: E402  (after the backend guard's imports)
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402

from keras_dropout.serving.check import check  # noqa: E402
from keras_dropout.serving.export import export  # noqa: E402
from keras_dropout.serving.warmup import WARMUP_FILE  # noqa: E402

ROW = tf.TensorSpec([None, 2], tf.float32, name="x")


def _save(module, path, signature="predict_it", spec=ROW):
    tf.saved_model.save(module, str(path), signatures={signature: module.f.get_concrete_function(spec)})
    return str(path)


def _write_warmup(path, requests):
    """A warmup file of `(signature, {input: array})` predict requests."""
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(path, WARMUP_FILE)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "model"
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _graph_problems(problems):
    return [p for p in problems if not p.startswith("missing warmup file")]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((2,), name="x"),
            keras.layers.Dense(4, name="check_dense"),
            kd.layers.MCDropout(0.5, name="check_dropout"),
            keras.layers.Dense(1, name="check_out"),
        ]
    )
    return export(model, tmp_path_factory.mktemp("good"), num_samples=4, max_samples=8)


@pytest.fixture
def good_copy(good, tmp_path):
    return shutil.copytree(good, tmp_path / "copy")


def test_a_good_export_has_no_problem(good):
    assert check(good) == []
    assert len(check(good, batching=True)) == 2  # mc_sample's scalar inputs; see test_export


def test_variable_write_is_flagged(tmp_path):
    class Counter(tf.Module):
        def __init__(self):
            self.calls = tf.Variable(0.0)

        @tf.function
        def f(self, x):
            self.calls.assign_add(1.0)
            return {"y": x + self.calls}

    (problem,) = _graph_problems(check(_save(Counter(), tmp_path / "counter", "count_it")))
    assert "'count_it'" in problem and "AssignAddVariableOp" in problem and "writes a variable" in problem


def test_py_func_is_flagged(tmp_path):
    class Python(tf.Module):
        @tf.function
        def f(self, x):
            return {"y": tf.numpy_function(lambda a: 2 * a, [x], tf.float32)}

    (problem,) = _graph_problems(check(_save(Python(), tmp_path / "python")))
    assert "'predict_it'" in problem and "PyFunc" in problem and "runs Python" in problem


def test_xla_compiled_signature_is_flagged(tmp_path):
    class Compiled(tf.Module):
        @tf.function(jit_compile=True)
        def f(self, x):
            return {"y": 2 * x}

    problems = _graph_problems(check(_save(Compiled(), tmp_path / "compiled")))
    assert problems
    assert all("'predict_it'" in p and "XLA-compiled" in p for p in problems), problems


def test_missing_warmup_file_is_flagged(tmp_path):
    class Double(tf.Module):
        @tf.function
        def f(self, x):
            return {"y": 2 * x}

    path = _save(Double(), tmp_path / "double")
    (problem,) = check(path)
    assert "missing warmup file" in problem and "tf_serving_warmup_requests" in problem
    _write_warmup(path, [("predict_it", {"x": np.zeros((1, 2), "float32")})])
    assert check(path) == []


def test_failing_warmup_record_is_flagged(good_copy):
    _write_warmup(
        good_copy,
        [
            ("serving_default", {"x": np.zeros((1, 2), "float32")}),
            ("mc", {"wrong_name": np.zeros((1, 2), "float32")}),
        ],
    )
    (problem,) = check(good_copy)
    assert "warmup record 2" in problem.lower() and "'mc'" in problem and "fails" in problem


def test_warmup_record_for_an_unknown_signature_is_flagged(good_copy):
    _write_warmup(good_copy, [("no_such_signature", {"x": np.zeros((1, 2), "float32")})])
    (problem,) = check(good_copy)
    assert "warmup record 1" in problem.lower() and "'no_such_signature'" in problem


def test_unparsable_warmup_file_is_flagged(good_copy):
    with open(os.path.join(good_copy, WARMUP_FILE), "wb") as f:
        f.write(b"not a TFRecord")
    (problem,) = check(good_copy)
    assert "does not parse" in problem


def test_more_than_1000_warmup_records_is_flagged(good_copy):
    _write_warmup(good_copy, [("serving_default", {"x": np.zeros((1, 2), "float32")})] * 1001)
    (problem,) = check(good_copy)
    assert "1001 records" in problem and "1000" in problem


def test_a_saved_model_that_does_not_load_is_flagged(good_copy):
    shutil.rmtree(os.path.join(good_copy, "variables"))
    (problem,) = check(good_copy)
    assert "does not load" in problem


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["empty", "missing"])
def test_a_folder_without_saved_model_is_flagged(tmp_path, make):
    path = tmp_path / "not_a_model"
    make(path)
    (problem,) = check(path)
    assert "no SavedModel" in problem and str(path) in problem


def test_batching_check_flags_a_fixed_batch_dimension(tmp_path):
    class Fixed(tf.Module):
        @tf.function
        def f(self, x):
            return {"y": 2 * x}

    path = _save(Fixed(), tmp_path / "fixed", spec=tf.TensorSpec([4, 2], tf.float32, name="x"))
    _write_warmup(path, [("predict_it", {"x": np.zeros((4, 2), "float32")})])
    assert check(path) == []
    (problem,) = check(path, batching=True)
    assert "'predict_it'" in problem and "'x'" in problem and "fixed to 4" in problem
