"""Server-side batching (`keras_dropout.serving.batching`) and the batching config protos.

Specification: TF Serving's `batching/batching_session_test.cc` (each ported test names its
case), the behaviour of `batching_session.cc`, `batching_util.cc` and the SharedBatchScheduler it
runs on, and the protos `servables/tensorflow/session_bundle_config.proto` (BatchingParameters)
and `config/monitoring_config.proto`.

`run` is a real TensorFlow function per signature (`Model`), recording every merged call. Tests
force merging with `Batcher.submit` (it returns once the request is queued), events and barriers,
never with sleeps; a batch that must not run early gets a timeout that cannot expire (`NEVER`).

TF Serving runs BatchingSessionTest with and without large batch splitting; the `split` fixture
does the same, and `options()` doubles max_batch_size and sets max_execution_batch_size to the
test's size when splitting, as that test's annotate_options does.

Not ported (batching_session_test.cc):
- BatchingSessionSignatureTest.TensorSignatureFromSignatureDef, TensorSignatureFromSignatureDefs:
  a C++ helper deriving queue keys from SignatureDefs; here each request's key is its own
  (signature, input names, output filter).
- BatchingWithPaddingAndCost, BatchingWithCost: RunMetadata cost-graph attribution, which has no
  counterpart in a Predict response; their batching (padding, splitting) is BatchingWithPadding's
  and BatchingWithLargeBatch's, ported below.
- BatchingLazySplit (and the enable_lazy_split parameter): a BasicBatchScheduler option that
  BatchingParameters cannot set.
- ThreadPoolOptions: inter-/intra-op thread pools passed through Session::Run, a C++ API.
- RequestThatDoesntMatchSignatureGetsRunAnyway: TF Serving declares queues from the SignatureDefs
  at load and runs any other request unbatched; here a request's queue is made on its first use,
  so no request bypasses batching and the case has nothing left to check.
- The /tensorflow/serving/batching_session/* metric totals that RequestWithIncompatibleInputTensor
  Sizes and AllowedBatchSizes* read: no such metrics here; the batch sizes they count are checked
  on the recorded calls instead.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

tf = pytest.importorskip("tensorflow")

from keras_dropout.serving import config_protos  # noqa: E402
from keras_dropout.serving.batching import Batcher  # noqa: E402
from keras_dropout.serving.batching import BatchingOptions  # noqa: E402
from keras_dropout.serving.errors import ServingError  # noqa: E402

pytestmark = pytest.mark.tf_only

# Seconds any wait may take before the test fails instead of hanging.
TIMEOUT = 30
# A batch_timeout_micros that cannot expire during a test: such batches run only once full.
NEVER = 10**9
BATCHING_PARAMETERS_FILE = Path(__file__).resolve().parents[1] / "serving/batching_parameters.txt"
UNEQUAL_SHAPES = (
    "Tensors with name 'x' from different tasks have different shapes and padding is turned off. "
    "Set pad_variable_length_inputs to true, or ensure that all tensors with the same name have "
    "equal dimensions starting with the first dim."
)


@pytest.fixture(scope="module")
def functions():
    """The signatures, traced once: TF Serving's half_plus_two family and a few failing ones."""
    anything = tf.TensorSpec(None, tf.float32)

    @tf.function(input_signature=[anything])
    def half_plus_two(x):
        return {"y": 0.5 * x + 2.0}

    @tf.function(input_signature=[anything])
    def x2_to_y3(x2):
        return {"y3": 0.5 * x2 + 3.0}

    @tf.function(input_signature=[anything, anything])
    def two_inputs(x, x2):
        return {"y": 0.5 * x + 2.0, "y3": 0.5 * x2 + 3.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 3], tf.float32)])
    def matrix_half_plus_two(x):
        return {"y": 0.5 * x + 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def affine(x):
        return {"y": 2.0 * x + tf.reduce_sum(x, axis=1, keepdims=True)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string)])
    def strings(x):
        return {"y": x}

    @tf.function(input_signature=[anything])
    def positive(x):
        tf.debugging.assert_positive(x, message="x must be positive")
        return {"y": x}

    @tf.function(input_signature=[anything])
    def with_total(x):
        return {"y": x, "total": tf.reduce_sum(x)}

    @tf.function(input_signature=[anything])
    def first_row(x):
        return {"y": x[:1]}

    return {
        "half_plus_two": half_plus_two,
        "x2_to_y3": x2_to_y3,
        "two_inputs": two_inputs,
        "matrix_half_plus_two": matrix_half_plus_two,
        "affine": affine,
        "strings": strings,
        "positive": positive,
        "with_total": with_total,
        "first_row": first_row,
    }


class Model:
    """A Batcher's `run`: real TF functions by signature name, recording each merged call.

    Args:
        functions: signature name -> tf.function returning a dict of outputs.
    """

    def __init__(self, functions):
        self._functions = functions
        self._lock = threading.Lock()
        # (signature name, merged inputs, output filter, thread name) per call.
        self.calls = []
        # Set once a call has started: the batch thread is busy from then on.
        self.entered = threading.Event()
        # An Event or Barrier every call waits on before running, when set.
        self.gate = None

    def __call__(self, signature_name, inputs, output_filter):
        with self._lock:
            record = {name: value.copy() for name, value in inputs.items()}
            thread = threading.current_thread().name
            self.calls.append((signature_name, record, output_filter, thread))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(TIMEOUT)
        function = self._functions.get(signature_name)
        if function is None:
            raise ServingError(
                "FAILED_PRECONDITION",
                f'Serving signature name: "{signature_name}" not found in signature def',
            )
        outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
        outputs = {name: value.numpy() for name, value in outputs.items()}
        return {name: outputs[name] for name in output_filter} if output_filter else outputs

    def batch_sizes(self):
        return [len(next(iter(inputs.values()))) for _, inputs, _, _ in self.calls]


@pytest.fixture
def model(functions):
    return Model(functions)


@pytest.fixture(params=[False, True], ids=["no_split", "split"])
def split(request):
    return request.param


def options(split=False, max_batch_size=4, num_batch_threads=1, batch_timeout_micros=NEVER, **kw):
    """BatchingOptions for a test: one batch thread and batches that only run when full.

    Args:
        split: turn on large batch splitting as BatchingSessionTest's annotate_options does:
            max_batch_size doubles, max_execution_batch_size (unless given) is `max_batch_size`.
        max_batch_size, num_batch_threads, batch_timeout_micros, **kw: BatchingOptions'.

    Returns:
        The `BatchingOptions`.
    """
    if split:
        return BatchingOptions(
            max_batch_size=2 * max_batch_size,
            enable_large_batch_splitting=True,
            max_execution_batch_size=kw.pop("max_execution_batch_size", max_batch_size),
            num_batch_threads=num_batch_threads,
            batch_timeout_micros=batch_timeout_micros,
            **kw,
        )
    return BatchingOptions(
        max_batch_size=max_batch_size,
        num_batch_threads=num_batch_threads,
        batch_timeout_micros=batch_timeout_micros,
        **kw,
    )


def floats(values, shape=None):
    array = np.array(values, dtype=np.float32)
    return array if shape is None else array.reshape(shape)


def result(future):
    return future.result(timeout=TIMEOUT)


def failure(future):
    error = future.exception(timeout=TIMEOUT)
    assert isinstance(error, ServingError), error
    return error


# --- Merging, timeouts and batch sizes -------------------------------------------------------


def test_concurrent_callers_share_one_batch_and_each_gets_its_own_rows(model):
    """N threads call `run` at once; the batch runs when full and returns each caller's rows."""
    requests = [floats(np.arange(3 * (k % 3 + 1)) + 10 * k, (k % 3 + 1, 3)) for k in range(6)]
    total = sum(len(x) for x in requests)
    barrier = threading.Barrier(len(requests))

    def call(x):
        barrier.wait(TIMEOUT)
        return batcher.run("affine", {"x": x})

    with Batcher(options(max_batch_size=total), model) as batcher:
        with ThreadPoolExecutor(len(requests)) as pool:
            outputs = [result(future) for future in [pool.submit(call, x) for x in requests]]

    for x, output in zip(requests, outputs):
        np.testing.assert_allclose(output["y"], 2 * x + x.sum(axis=1, keepdims=True))
    assert model.batch_sizes() == [total]
    assert len(model.calls) < len(requests)


def test_basic_two_requests_fill_one_batch(model, split):
    """TFS: batching_session_test.cc Basic."""
    with Batcher(options(split, max_batch_size=4), model) as batcher:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(batcher.run, "half_plus_two", {"x": floats([100.0, 42.0])})
            second = pool.submit(batcher.run, "half_plus_two", {"x": floats([71.5, 18.3])})
            np.testing.assert_allclose(result(first)["y"], [52.0, 23.0])
            np.testing.assert_allclose(result(second)["y"], [37.75, 11.15], rtol=1e-6)
    assert model.batch_sizes() == [4]


def test_requests_queued_while_the_thread_is_busy_merge(model):
    """With TF Serving's default batch_timeout_micros=0, tasks merge while all threads work."""
    model.gate = threading.Event()
    with Batcher(options(max_batch_size=16, batch_timeout_micros=0), model) as batcher:
        first = batcher.submit("affine", {"x": floats([[1.0, 2.0]])})
        assert model.entered.wait(TIMEOUT)
        queued = [batcher.submit("affine", {"x": floats([[k, -k]])}) for k in range(5)]
        model.gate.set()
        np.testing.assert_allclose(result(first)["y"], [[5.0, 7.0]])
        for k, future in enumerate(queued):
            np.testing.assert_allclose(result(future)["y"], [[2.0 * k, -2.0 * k]])
    assert model.batch_sizes() == [1, 5]


def test_singleton_batch(model, split):
    """TFS: batching_session_test.cc SingletonBatch."""
    with Batcher(options(split, max_batch_size=4, batch_timeout_micros=0), model) as batcher:
        output = batcher.run("half_plus_two", {"x": floats([100.0, 42.0])})
    np.testing.assert_allclose(output["y"], [52.0, 23.0])
    assert model.batch_sizes() == [2]


def test_batch_timeout_closes_a_partial_batch(model):
    with Batcher(options(max_batch_size=100, batch_timeout_micros=1000), model) as batcher:
        output = batcher.run("half_plus_two", {"x": floats([100.0, 42.0])})
    np.testing.assert_allclose(output["y"], [52.0, 23.0])
    assert model.batch_sizes() == [2]


def test_a_task_that_does_not_fit_closes_the_open_batch(model):
    with Batcher(options(max_batch_size=4), model) as batcher:
        first = batcher.submit("half_plus_two", {"x": floats([0.0, 2.0, 4.0])})
        second = batcher.submit("half_plus_two", {"x": floats([6.0, 8.0])})
        np.testing.assert_allclose(result(first)["y"], [2.0, 3.0, 4.0])
        # Its batch holds 2 of 4 rows and cannot time out: only a third task can complete it.
        assert not second.done()
        third = batcher.submit("half_plus_two", {"x": floats([10.0, 12.0])})
        np.testing.assert_allclose(result(second)["y"], [5.0, 6.0])
        np.testing.assert_allclose(result(third)["y"], [7.0, 8.0])
    assert model.batch_sizes() == [3, 4]


def test_num_batch_threads_run_batches_concurrently(model):
    """Both batches must be inside `run` at once to pass the barrier: two threads serve them."""
    model.gate = threading.Barrier(2)
    batching = options(
        max_batch_size=4, num_batch_threads=2, batch_timeout_micros=0, thread_pool_name="pool"
    )
    with Batcher(batching, model) as batcher:
        first = batcher.submit("half_plus_two", {"x": floats([2.0])})
        assert model.entered.wait(TIMEOUT)
        second = batcher.submit("half_plus_two", {"x": floats([4.0])})
        np.testing.assert_allclose(result(first)["y"], [3.0])
        np.testing.assert_allclose(result(second)["y"], [4.0])
    assert {thread for _, _, _, thread in model.calls} == {"pool_0", "pool_1"}


def test_request_larger_than_max_batch_size_is_invalid_argument(model):
    """TFS: batching_session_test.cc BatchingWithLargeBatch (without splitting)."""
    with Batcher(options(max_batch_size=3, batch_timeout_micros=1000), model) as batcher:
        with pytest.raises(ServingError) as error:
            batcher.submit("half_plus_two", {"x": floats(np.arange(5, 21), (4, 2, 2))})
        output = batcher.run("half_plus_two", {"x": floats([5, 6, 7, 8], (1, 2, 2))})
    assert error.value.code == "INVALID_ARGUMENT"
    assert "Task size 4 is larger than maximum input batch size 3" in error.value.message
    np.testing.assert_allclose(output["y"], floats([4.5, 5, 5.5, 6], (1, 2, 2)))


def test_large_batch_splitting_spreads_a_request_over_batches(model):
    """TFS: batching_session_test.cc BatchingWithLargeBatch (with splitting)."""
    batching = options(
        True,
        max_batch_size=3,
        max_execution_batch_size=2,
        num_batch_threads=2,
        batch_timeout_micros=1000,
    )
    with Batcher(batching, model) as batcher:
        small = batcher.submit("half_plus_two", {"x": floats([5, 6, 7, 8], (1, 2, 2))})
        large = batcher.submit("half_plus_two", {"x": floats(np.arange(5, 17), (3, 2, 2))})
        np.testing.assert_allclose(result(small)["y"], floats([4.5, 5, 5.5, 6], (1, 2, 2)))
        np.testing.assert_allclose(result(large)["y"], floats(np.arange(5, 17) / 2 + 2, (3, 2, 2)))
    assert max(model.batch_sizes()) <= 2
    assert sum(model.batch_sizes()) == 4


def test_split_request_fails_when_one_of_its_batches_fails(model):
    """TFS: batching_session_test.cc BatchHandlesSplitError."""
    batching = options(True, max_batch_size=3, max_execution_batch_size=2)
    with Batcher(batching, model) as batcher:
        # Pieces of 2 and 1 rows; the second shares a batch with the [1, 2] request below.
        first = batcher.submit("half_plus_two", {"x": floats([1, 2, 3], (3, 1, 1))})
        second = batcher.submit("half_plus_two", {"x": floats([1, 2], (1, 2))})
        for future in (first, second):
            error = failure(future)
            assert (error.code, error.message) == ("FAILED_PRECONDITION", UNEQUAL_SHAPES)


# --- Padding ----------------------------------------------------------------------------------


def test_allowed_batch_sizes_no_padding_needed(model):
    """TFS: batching_session_test.cc AllowedBatchSizesNoPaddingNeeded."""
    batching = options(max_batch_size=4, batch_timeout_micros=0, allowed_batch_sizes=(2, 4))
    with Batcher(batching, model) as batcher:
        output = batcher.run("half_plus_two", {"x": floats([100.0, 42.0])})
    np.testing.assert_allclose(output["y"], [52.0, 23.0])
    assert model.batch_sizes() == [2]


def test_allowed_batch_sizes_require_padding(model):
    """TFS: batching_session_test.cc AllowedBatchSizesRequirePadding."""
    batching = options(max_batch_size=4, batch_timeout_micros=0, allowed_batch_sizes=(1, 3, 4))
    with Batcher(batching, model) as batcher:
        output = batcher.run("half_plus_two", {"x": floats([100.0, 42.0])})
    np.testing.assert_allclose(output["y"], [52.0, 23.0])
    assert model.batch_sizes() == [3]


def test_padding_repeats_the_first_row_of_the_last_task(model):
    model.gate = threading.Event()
    batching = options(max_batch_size=4, batch_timeout_micros=0, allowed_batch_sizes=(4,))
    with Batcher(batching, model) as batcher:
        busy = batcher.submit("half_plus_two", {"x": floats([0.0])})
        assert model.entered.wait(TIMEOUT)
        first = batcher.submit("half_plus_two", {"x": floats([1.0, 2.0])})
        last = batcher.submit("half_plus_two", {"x": floats([7.0])})
        model.gate.set()
        np.testing.assert_allclose(result(busy)["y"], [2.0])
        np.testing.assert_allclose(result(first)["y"], [2.5, 3.0])
        np.testing.assert_allclose(result(last)["y"], [5.5])
    np.testing.assert_array_equal(model.calls[0][1]["x"], [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(model.calls[1][1]["x"], [1.0, 2.0, 7.0, 7.0])


def test_variable_length_inputs_are_padded_with_their_first_element(model, split):
    """TFS: batching_session_test.cc BatchingWithPadding."""
    batching = options(split, max_batch_size=2, pad_variable_length_inputs=True)
    with Batcher(batching, model) as batcher:
        small = batcher.submit("matrix_half_plus_two", {"x": floats([1, 2, 3, 4], (1, 2, 2))})
        large = batcher.submit("matrix_half_plus_two", {"x": floats(np.arange(5, 14), (1, 3, 3))})
        np.testing.assert_allclose(
            result(small)["y"], floats([2.5, 3, 2.5, 3.5, 4, 2.5, 2.5, 2.5, 2.5], (1, 3, 3))
        )
        np.testing.assert_allclose(result(large)["y"], floats(np.arange(5, 14) / 2 + 2, (1, 3, 3)))


def test_variable_length_padding_pads_strings_too(model):
    batching = options(max_batch_size=2, pad_variable_length_inputs=True)
    with Batcher(batching, model) as batcher:
        short = batcher.submit("strings", {"x": np.array([[b"a", b"b"]], dtype=object)})
        long = batcher.submit("strings", {"x": np.array([[b"c", b"d", b"e"]], dtype=object)})
        assert result(short)["y"].tolist() == [[b"a", b"b", b"a"]]
        assert result(long)["y"].tolist() == [[b"c", b"d", b"e"]]


def test_unequal_shapes_without_padding_fail_every_task(model, split):
    """TFS: batching_session_test.cc UnequalTensorShapesWithPaddingTurnedOff."""
    with Batcher(options(split, max_batch_size=2), model) as batcher:
        futures = [
            batcher.submit("matrix_half_plus_two", {"x": floats([1, 2, 3, 4], (1, 2, 2))}),
            batcher.submit("matrix_half_plus_two", {"x": floats(np.arange(5, 14), (1, 3, 3))}),
        ]
        for future in futures:
            error = failure(future)
            assert (error.code, error.message) == ("FAILED_PRECONDITION", UNEQUAL_SHAPES)
    assert model.calls == []


# --- Request and output errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs, message",
    [
        # TFS: batching_session_test.cc RequestWithIncompatibleInputTensorSizes.
        (
            {"input_0": np.array([3], np.int32), "input_1": np.array([5, 7], np.int32)},
            "Batching Run() input tensors must have equal 0th-dimension size",
        ),
        # TF Serving's ComputeTensorBatchSize (batching_util.h), no test case of its own.
        ({"x": np.float32(1.0)}, "Batching Run() input tensors must have at least one dimension"),
        ({}, "Batching Run() must have at least one input tensor"),
    ],
    ids=["unequal_dim0", "scalar", "no_inputs"],
)
def test_requests_without_one_batch_dimension_are_invalid_argument(model, split, inputs, message):
    with Batcher(options(split), model) as batcher:
        with pytest.raises(ServingError) as error:
            batcher.submit("two_inputs", inputs)
    assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT", message)
    assert model.calls == []


@pytest.mark.parametrize("max_enqueued_batches", [1, 0], ids=["one", "zero_counts_as_one"])
def test_full_queue_is_unavailable(model, max_enqueued_batches):
    model.gate = threading.Event()
    batching = options(max_batch_size=2, max_enqueued_batches=max_enqueued_batches)
    with Batcher(batching, model) as batcher:
        running = batcher.submit("half_plus_two", {"x": floats([0.0, 2.0])})
        assert model.entered.wait(TIMEOUT)
        waiting = batcher.submit("half_plus_two", {"x": floats([4.0, 6.0])})
        with pytest.raises(ServingError) as error:
            batcher.submit("half_plus_two", {"x": floats([8.0])})
        model.gate.set()
        np.testing.assert_allclose(result(running)["y"], [2.0, 3.0])
        np.testing.assert_allclose(result(waiting)["y"], [4.0, 5.0])
    assert error.value.code == "UNAVAILABLE"
    assert error.value.message == (
        "The batch scheduling queue to which this task was submitted is full; currently 1 "
        "batches enqueued and max_enqueued_batches is 1"
    )


def test_full_queue_with_splitting_is_unavailable(model):
    model.gate = threading.Event()
    batching = options(True, max_batch_size=2, max_enqueued_batches=1)
    with Batcher(batching, model) as batcher:
        running = batcher.submit("half_plus_two", {"x": floats([0.0, 2.0])})
        assert model.entered.wait(TIMEOUT)
        with pytest.raises(ServingError) as error:
            batcher.submit("half_plus_two", {"x": floats([4.0, 6.0, 8.0])})
        model.gate.set()
        np.testing.assert_allclose(result(running)["y"], [2.0, 3.0])
    assert error.value.code == "UNAVAILABLE"
    assert error.value.message.startswith(
        "The batch scheduling queue to which this task was submitted is full; task size is 3 but "
        "scheduling capacity is only 2"
    )


def test_tf_error_from_run_reaches_every_task_with_its_code(model):
    with Batcher(options(max_batch_size=2), model) as batcher:
        futures = [
            batcher.submit("positive", {"x": floats([1.0])}),
            batcher.submit("positive", {"x": floats([-1.0])}),
        ]
        errors = [failure(future) for future in futures]
    assert [error.code for error in errors] == ["INVALID_ARGUMENT"] * 2
    assert all("x must be positive" in error.message for error in errors)
    assert errors[0] is not errors[1]


def test_serving_error_from_run_reaches_every_task_unchanged(model):
    with Batcher(options(max_batch_size=2), model) as batcher:
        futures = [batcher.submit("unknown", {"x": floats([k])}) for k in range(2)]
        errors = [failure(future) for future in futures]
    assert {(error.code, error.message) for error in errors} == {
        ("FAILED_PRECONDITION", 'Serving signature name: "unknown" not found in signature def')
    }


def test_other_exception_from_run_is_internal(model):
    def broken(signature_name, inputs, output_filter):
        raise RuntimeError("the model is broken")

    with Batcher(options(max_batch_size=1), broken) as batcher:
        error = failure(batcher.submit("half_plus_two", {"x": floats([1.0])}))
    assert (error.code, error.message) == ("INTERNAL", "RuntimeError: the model is broken")


@pytest.mark.parametrize(
    "signature_name, message",
    [
        ("with_total", "Batched output tensor has 0 dimensions"),
        (
            "first_row",
            "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
            "sizes of the input tensors",
        ),
    ],
)
def test_output_without_the_batch_dimension_fails_every_task(model, signature_name, message):
    with Batcher(options(max_batch_size=2), model) as batcher:
        futures = [batcher.submit(signature_name, {"x": floats([k, k])}) for k in (1.0, 2.0)]
        for future in futures:
            error = failure(future)
            assert (error.code, error.message) == ("FAILED_PRECONDITION", message)


# --- Queues -----------------------------------------------------------------------------------


def test_different_order_for_input_and_output_tensors(model, split):
    """TFS: batching_session_test.cc DifferentOrderForInputAndOutputTensors.

    Outputs are dicts here, so "each caller gets its outputs in its own order" becomes "each
    caller gets every output it asked for"; the three requests share one batch.
    """
    x, x2 = floats([8.0, 6.0]), floats([100.0, 42.0])
    with Batcher(options(split, max_batch_size=6), model) as batcher:
        futures = [
            batcher.submit("two_inputs", {"x": x, "x2": x2}, ("y", "y3")),
            batcher.submit("two_inputs", {"x2": x2, "x": x}, ("y3", "y")),
            batcher.submit("two_inputs", {"x2": x2, "x": x}, ("y", "y3")),
        ]
        for future in futures:
            output = result(future)
            np.testing.assert_allclose(output["y"], [6.0, 5.0])
            np.testing.assert_allclose(output["y3"], [53.0, 24.0])
    assert model.batch_sizes() == [6]


def test_subset_output_tensors(model, split):
    """TFS: batching_session_test.cc SubsetOutputTensors."""
    x, x2 = floats([8.0, 6.0]), floats([100.0, 42.0])
    with Batcher(options(split, max_batch_size=6, batch_timeout_micros=1000), model) as batcher:
        futures = [
            batcher.submit("two_inputs", {"x": x, "x2": x2}, ("y",)),
            batcher.submit("two_inputs", {"x2": x2, "x": x}, ("y3",)),
            batcher.submit("two_inputs", {"x2": x2, "x": x}, ("y",)),
        ]
        outputs = [result(future) for future in futures]
    assert [sorted(output) for output in outputs] == [["y"], ["y3"], ["y"]]
    np.testing.assert_allclose(outputs[0]["y"], [6.0, 5.0])
    np.testing.assert_allclose(outputs[1]["y3"], [53.0, 24.0])
    np.testing.assert_allclose(outputs[2]["y"], [6.0, 5.0])
    # One queue per output filter: no batch mixes them.
    assert {call[2] for call in model.calls} == {("y",), ("y3",)}


def test_multiple_signatures(model, split):
    """TFS: batching_session_test.cc MultipleSignatures."""
    x = floats([100.0, 42.0])
    with Batcher(options(split, max_batch_size=4), model) as batcher:
        first_y = batcher.submit("half_plus_two", {"x": x})
        first_y3 = batcher.submit("x2_to_y3", {"x2": x})
        second_y = batcher.submit("half_plus_two", {"x": x})
        for future in (first_y, second_y):
            np.testing.assert_allclose(result(future)["y"], [52.0, 23.0])
        assert not first_y3.done()
        second_y3 = batcher.submit("x2_to_y3", {"x2": x})
        for future in (first_y3, second_y3):
            np.testing.assert_allclose(result(future)["y3"], [53.0, 24.0])
    assert [call[0] for call in model.calls] == ["half_plus_two", "x2_to_y3"]
    assert model.batch_sizes() == [4, 4]


# --- Deadlines and closing --------------------------------------------------------------------


def test_enqueued_longer_than_timeout(model, split):
    """TFS: batching_session_test.cc EnqueuedLongerThanTimeout."""
    with Batcher(options(split, batch_timeout_micros=0), model) as batcher:
        future = batcher.submit(
            "half_plus_two", {"x": floats([100.0, 42.0])}, deadline=time.monotonic() - 1
        )
        error = failure(future)
    assert error.code == "RESOURCE_EXHAUSTED"
    assert "Run() timeout exceeded while waiting in batching queue" in error.message
    assert model.calls == []


def test_a_batch_runs_when_one_of_its_tasks_is_within_its_deadline(model):
    """As TF Serving's ProcessBatch: only a batch whose every task is late is refused."""
    with Batcher(options(max_batch_size=2), model) as batcher:
        late = batcher.submit("half_plus_two", {"x": floats([2.0])}, deadline=time.monotonic() - 1)
        on_time = batcher.submit("half_plus_two", {"x": floats([4.0])})
        np.testing.assert_allclose(result(late)["y"], [3.0])
        np.testing.assert_allclose(result(on_time)["y"], [4.0])


def test_close_fails_queued_requests_and_later_ones(model):
    model.gate = threading.Event()
    batching = BatchingOptions(
        max_batch_size=4, num_batch_threads=1, thread_pool_name="closing_pool"
    )
    batcher = Batcher(batching, model)
    running = batcher.submit("half_plus_two", {"x": floats([2.0])})
    assert model.entered.wait(TIMEOUT)
    queued = batcher.submit("half_plus_two", {"x": floats([4.0])})
    closer = threading.Thread(target=batcher.close)
    closer.start()

    error = failure(queued)
    assert error.code == "UNAVAILABLE"
    with pytest.raises(ServingError) as later:
        batcher.run("half_plus_two", {"x": floats([6.0])})
    assert later.value.code == "UNAVAILABLE"

    model.gate.set()  # The running batch finishes; then close() returns.
    np.testing.assert_allclose(result(running)["y"], [3.0])
    closer.join(TIMEOUT)
    assert not closer.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("closing_pool_")]
    assert model.batch_sizes() == [1]


# --- Options ----------------------------------------------------------------------------------


def test_unset_parameters_take_tf_serving_defaults():
    defaults = BatchingOptions.from_proto(config_protos.BatchingParameters())
    assert defaults == BatchingOptions()
    assert (
        defaults.max_batch_size,
        defaults.batch_timeout_micros,
        defaults.max_enqueued_batches,
        defaults.thread_pool_name,
        defaults.enable_large_batch_splitting,
        defaults.allowed_batch_sizes,
        defaults.pad_variable_length_inputs,
        defaults.execution_batch_size,
    ) == (1000, 0, 10, "batch_threads", False, (), False, 1000)
    assert defaults.num_batch_threads >= 1


def test_the_shipped_batching_parameters_file():
    text = BATCHING_PARAMETERS_FILE.read_text()
    parsed = BatchingOptions.from_proto(
        config_protos.parse_batching_parameters(text, str(BATCHING_PARAMETERS_FILE))
    )
    assert parsed == BatchingOptions(
        max_batch_size=16, batch_timeout_micros=2000, max_enqueued_batches=64, num_batch_threads=4
    )


def test_every_batching_parameter_is_read():
    text = """
        max_batch_size { value: 8 }
        batch_timeout_micros { value: 100 }
        max_enqueued_batches { value: 3 }
        num_batch_threads { value: 2 }
        thread_pool_name { value: "model_server_batch_threads" }
        enable_large_batch_splitting { value: true }
        max_execution_batch_size { value: 4 }
        allowed_batch_sizes: 2
        allowed_batch_sizes: 8
        pad_variable_length_inputs: true
    """
    parsed = BatchingOptions.from_proto(config_protos.parse_batching_parameters(text))
    assert parsed == BatchingOptions(
        max_batch_size=8,
        batch_timeout_micros=100,
        max_enqueued_batches=3,
        num_batch_threads=2,
        thread_pool_name="model_server_batch_threads",
        enable_large_batch_splitting=True,
        max_execution_batch_size=4,
        allowed_batch_sizes=(2, 8),
        pad_variable_length_inputs=True,
    )
    assert parsed.execution_batch_size == 4


def test_max_execution_batch_size_applies_only_when_splitting():
    # TF Serving's GetQueueOptions: unset, it is max_batch_size; without splitting, ignored.
    splitting = BatchingOptions(max_batch_size=8, enable_large_batch_splitting=True)
    assert splitting.execution_batch_size == 8
    assert BatchingOptions(max_batch_size=8, max_execution_batch_size=4).execution_batch_size == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_batch_size": 0}, "max_batch_size must be positive; was 0"),
        ({"batch_timeout_micros": -1}, "batch_timeout_micros must be non-negative; was -1"),
        ({"max_enqueued_batches": -1}, "max_enqueued_batches must be positive; was -1"),
        (
            {"enable_large_batch_splitting": True, "max_enqueued_batches": 0},
            "max_enqueued_batches must be positive; was 0",
        ),
        ({"num_batch_threads": 0}, "num_batch_threads must be positive; was 0"),
        # TFS: batching_session_test.cc UnsortedAllowedBatchSizesRejected.
        (
            {"max_batch_size": 4, "allowed_batch_sizes": (4, 2)},
            "allowed_batch_sizes entries must be monotonically increasing",
        ),
        # TFS: batching_session_test.cc FinalAllowedBatchSizeLargerThanMaxBatchSizeRejected.
        (
            {"max_batch_size": 4, "allowed_batch_sizes": (2, 8)},
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 8; "
            "expected 4",
        ),
        (
            {"max_batch_size": 4, "allowed_batch_sizes": (0, 4)},
            "allowed_batch_sizes entries must be positive",
        ),
        (
            {
                "max_batch_size": 4,
                "enable_large_batch_splitting": True,
                "max_execution_batch_size": 8,
            },
            "max_batch_size must be greater than or equal to max_execution_batch_size",
        ),
        (
            {"enable_large_batch_splitting": True, "max_execution_batch_size": 0},
            "max_execution_batch_size must be positive; was 0",
        ),
    ],
    ids=[
        "max_batch_size",
        "batch_timeout_micros",
        "max_enqueued_batches",
        "max_enqueued_batches_splitting",
        "num_batch_threads",
        "unsorted_allowed_batch_sizes",
        "last_allowed_batch_size",
        "nonpositive_allowed_batch_size",
        "execution_above_max",
        "execution_nonpositive",
    ],
)
def test_invalid_options_raise_value_error(kwargs, message):
    with pytest.raises(ValueError) as error:
        BatchingOptions(**kwargs)
    assert message in str(error.value)


def test_invalid_parameters_file_is_refused_when_building_options():
    parameters = config_protos.parse_batching_parameters(
        "max_batch_size { value: 4 } allowed_batch_sizes: [2, 8]"
    )
    with pytest.raises(ValueError, match="Last entry in allowed_batch_sizes must match"):
        BatchingOptions.from_proto(parameters)


# --- Config protos ----------------------------------------------------------------------------


def _fields(message_class):
    """name -> (number, type, label, type name), read as protoc would write the .proto."""
    proto = descriptor_pb2.DescriptorProto()
    message_class.DESCRIPTOR.CopyToProto(proto)
    return {
        field.name: (field.number, field.type, field.label, field.type_name) for field in proto.field
    }


_FIELD = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
_INT64_VALUE = (_FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value")


def test_batching_parameters_proto_is_tf_servings():
    """The fields of session_bundle_config.proto's BatchingParameters, number for number."""
    descriptor = config_protos.BatchingParameters.DESCRIPTOR
    assert descriptor.full_name == "tensorflow.serving.BatchingParameters"
    assert descriptor.file.name == (
        "tensorflow_serving/servables/tensorflow/session_bundle_config.proto"
    )
    assert _fields(config_protos.BatchingParameters) == {
        "max_batch_size": (1, *_INT64_VALUE),
        "batch_timeout_micros": (2, *_INT64_VALUE),
        "max_enqueued_batches": (3, *_INT64_VALUE),
        "num_batch_threads": (4, *_INT64_VALUE),
        "thread_pool_name": (5, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.StringValue"),
        "allowed_batch_sizes": (6, _FIELD.TYPE_INT64, _REPEATED, ""),
        "pad_variable_length_inputs": (7, _FIELD.TYPE_BOOL, _OPTIONAL, ""),
        "enable_large_batch_splitting": (
            8, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.BoolValue"
        ),
        "max_execution_batch_size": (9, *_INT64_VALUE),
    }
    # Field 1, a nested Int64Value{value: 16}: the bytes TF Serving's C++ writes.
    parameters = config_protos.parse_batching_parameters("max_batch_size { value: 16 }")
    assert parameters.SerializeToString() == b"\n\x02\x08\x10"


def test_monitoring_config_proto_is_tf_servings():
    assert config_protos.MonitoringConfig.DESCRIPTOR.file.name == (
        "tensorflow_serving/config/monitoring_config.proto"
    )
    assert _fields(config_protos.MonitoringConfig) == {
        "prometheus_config": (
            1, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".tensorflow.serving.PrometheusConfig"
        )
    }
    assert _fields(config_protos.PrometheusConfig) == {
        "enable": (1, _FIELD.TYPE_BOOL, _OPTIONAL, ""),
        "path": (2, _FIELD.TYPE_STRING, _OPTIONAL, ""),
    }
    config = config_protos.parse_monitoring_config(
        'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }'
    )
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


@pytest.mark.parametrize(
    "text, detail",
    [
        ("max_batch_size: 16", "max_batch_size"),  # A wrapper needs { value: ... }.
        ("max_batch_size { value: 16 } batch_size: 4", "batch_size"),
        ("max_batch_size { value: 'sixteen' }", "sixteen"),
    ],
    ids=["unwrapped_value", "unknown_field", "not_a_number"],
)
def test_malformed_batching_parameters_file(tmp_path, text, detail):
    path = tmp_path / "batching_parameters.txt"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        config_protos.parse_batching_parameters(path.read_text(), str(path))
    # TF Serving's main/server.cc ParseProtoTextFile, then the parser's own explanation.
    assert f"Invalid protobuf file: '{path}'" in str(error.value)
    assert detail in str(error.value)


def test_malformed_monitoring_config_file(tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text("prometheus_config { enabled: true }")
    with pytest.raises(ValueError) as error:
        config_protos.parse_monitoring_config(path.read_text(), str(path))
    assert f"Invalid protobuf file: '{path}'" in str(error.value)
    assert "enabled" in str(error.value)
