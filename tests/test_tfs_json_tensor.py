"""TF Serving's JSON tensor tests, run against the REST API of `keras-dropout serve`.

Port of `tensorflow_serving/util/json_tensor_test.cc`. TF Serving's cases call
`FillPredictRequestFromJson` with a map of input dtypes and compare the `PredictRequest` built;
here one SavedModel has an identity signature for each map the cases use (unknown shapes, as
the cases give dtypes only), and each case

- sends its body to `RestHandler(manager).handle("POST", ".../m:predict", body)` (the REST API
  without sockets): a good body must be answered 200 with the tensors it holds, a bad one with
  400 and the message substring TF Serving's case checks; the body names the signature where
  TF Serving's case relies on its map alone;
- compares the request tensors, read as the handler reads them (`parse_predict_body`, then
  `instances_to_arrays` / `inputs_to_arrays` with the signature's specs, then the gRPC
  encoding `array_to_tensor_proto`), with the `TensorProto` TF Serving's case expects.

`MakeJsonFromTensors` cases build TensorProtos no request produces (zero batches, complex
values): they run the same functions the handler answers with (`tensor_proto_to_array`,
`outputs_to_predictions` / `outputs_to_columns`, `tensors.dumps`) on TF Serving's protos, and,
where a signature can produce the tensors, also go through the handler. Classify and regress
cases run `json_examples`. JSON is compared as TF Serving's `CompareJson` compares it: parsed,
numbers as numbers (or, for `CompareJsonAllValuesAsStrings`, as the text written).

Beyond TF Serving's cases, the issue's deviations: nesting deeper than Python's json recurses
(accepted under a key the request does not use, a clear 400 under one it uses), the gRPC output
encoding (typed fields by default, `tensor_content` on request) and float formatting.

Not ported: nothing; every case has a black-box or function-level meaning.
"""

import json
import math

import numpy as np
import pytest

pytestmark = pytest.mark.tf_only

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from google.protobuf import text_format  # noqa: E402
from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow_serving.apis import classification_pb2  # noqa: E402
from tensorflow_serving.apis import regression_pb2  # noqa: E402

from keras_dropout.serving import json_examples  # noqa: E402
from keras_dropout.serving import tensors  # noqa: E402
from keras_dropout.serving.errors import ServingError  # noqa: E402
from keras_dropout.serving.rest import RestHandler  # noqa: E402
from keras_dropout.serving.rest import error_body  # noqa: E402
from keras_dropout.serving.rest import parse_predict_body  # noqa: E402
from keras_dropout.serving.servables import ModelConfig  # noqa: E402
from keras_dropout.serving.servables import ModelManager  # noqa: E402

MODEL = "m"
PREDICT = f"/v1/models/{MODEL}:predict"

# Identity signatures: signature name -> {input name: dtype}; each output is its input.
IDENTITIES = {
    "serving_default": {"default": tf.int32},
    "predict_images": {"default": tf.int32},
    "float": {"default": tf.float32},
    "double": {"default": tf.float64},
    "string": {"default": tf.string},
    "multi": {
        "int_tensor": tf.int32,
        "str_tensor": tf.string,
        "float_tensor": tf.float32,
        "dbl_tensor": tf.float64,
    },
    "columnar": {"int_tensor": tf.int32},
    "columnar_multi": {"int_tensor": tf.int32, "str_tensor": tf.string, "bin_tensor": tf.string},
    "int_str": {"int_tensor": tf.int32, "str_tensor": tf.string},
    "str_only": {"str_tensor": tf.string},
    "bytes": {"str_tensor_bytes": tf.string},
    "named_outputs": {
        "int_tensor": tf.int32,
        "str_tensor": tf.string,
        "float_tensor": tf.float32,
        "double_scalar_tensor": tf.float64,
        "str_tensor_bytes": tf.string,
    },
}


def _identity(inputs):
    specs = [tf.TensorSpec(None, dtype, name=name) for name, dtype in inputs.items()]

    @tf.function(input_signature=specs)
    def identity(*args):
        return {name: tf.identity(arg) for name, arg in zip(inputs, args)}

    return identity


@tf.function(
    input_signature=[
        tf.TensorSpec(None, tf.int32, name="int_tensor"),
        tf.TensorSpec(None, tf.string, name="str_tensor"),
    ]
)
def _uneven(int_tensor, str_tensor):
    # Outputs whose batch sizes differ, which row format cannot answer.
    return {"int_tensor": int_tensor, "str_tensor": str_tensor[:1]}


@tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="default")])
def _complex(default):
    return {"tensor": tf.complex(default, default)}


@tf.function(input_signature=[tf.TensorSpec(None, tf.int32, name="default")])
def _total(default):
    return {"tensor": tf.reduce_sum(default)}


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    base_path = tmp_path_factory.mktemp("json_tensor") / MODEL
    signatures = {name: _identity(inputs) for name, inputs in IDENTITIES.items()}
    signatures.update(uneven=_uneven, complex=_complex, total=_total)
    tf.saved_model.save(tf.Module(), str(base_path / "1"), signatures=signatures)
    manager = ModelManager([ModelConfig(MODEL, str(base_path))], file_system_poll_wait_seconds=0)
    manager.start()
    yield manager
    manager.stop()


@pytest.fixture(scope="module")
def handler(manager):
    return RestHandler(manager)


# ----------------------------------------------------------------------------- helpers


def _post(handler, body, path=PREDICT):
    data = body.encode("utf-8") if isinstance(body, str) else body
    status, payload = handler.handle("POST", path, data)
    return status, payload.decode("utf-8")


def _ok(handler, body, path=PREDICT):
    status, payload = _post(handler, body, path)
    assert status == 200, payload
    return payload


def _error(handler, body, fragment, path=PREDICT):
    """TF Serving's `ASSERT_TRUE(errors::IsInvalidArgument(status))` + `HasSubstr`, over REST."""
    status, payload = _post(handler, body, path)
    assert status == 400, payload
    message = json.loads(payload)["error"]
    assert fragment in message, message
    return message


def _request_tensors(manager, body):
    """The request's tensors as the handler reads them: `(format, {name: TensorProto})`."""
    signature_name, key, payload = parse_predict_body(body.encode("utf-8"))
    specs = manager.servable(MODEL).input_specs(signature_name)
    convert = tensors.instances_to_arrays if key == "instances" else tensors.inputs_to_arrays
    arrays = convert(payload, specs)
    return key, {name: tensors.array_to_tensor_proto(array) for name, array in arrays.items()}


def _assert_proto(actual, expected_text):
    """TF Serving's EqualsProto (NaN equal to NaN, as text_format prints both as "nan")."""
    expected = text_format.Parse(expected_text, tensor_pb2.TensorProto())
    assert text_format.MessageToString(actual) == text_format.MessageToString(expected)


def _proto(text):
    return text_format.Parse(text, tensor_pb2.TensorProto())


def _json(text):
    """`CompareJson`'s reading: numbers as numbers, NaN / Infinity tokens included."""
    return json.loads(text)


def _json_as_strings(text):
    """`CompareJsonAllValuesAsStrings`' reading: every number as the text written."""
    return json.loads(text, parse_int=str, parse_float=str, parse_constant=str)


def _make_json(tensor_map, key):
    """TF Serving's MakeJsonFromTensors, as the handler answers: `{key: ...}` written by dumps."""
    outputs = {
        name: tensors.tensor_proto_to_array(_proto(text), name) for name, text in tensor_map.items()
    }
    convert = tensors.outputs_to_predictions if key == "predictions" else tensors.outputs_to_columns
    return tensors.dumps({key: convert(outputs)}).decode("ascii")


def _make_json_error(tensor_map):
    with pytest.raises(ServingError) as raised:
        _make_json(tensor_map, "predictions")
    assert raised.value.code == "INVALID_ARGUMENT"
    return raised.value.message


# --------------------------------------------------------------- FillPredictRequestFromJson

INT_3X2 = """
    dtype: DT_INT32
    tensor_shape { dim { size: 3 } dim { size: 2 } }
    int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6
"""


def test_single_unnamed_tensor(handler, manager):
    """TFS: json_tensor_test.cc SingleUnnamedTensor"""
    body = '{"instances": [[1,2],[3,4],[5,6]]}'
    key, request = _request_tensors(manager, body)
    assert key == "instances" and list(request) == ["default"]
    _assert_proto(request["default"], INT_3X2)
    assert _json(_ok(handler, body)) == {"predictions": [[1, 2], [3, 4], [5, 6]]}


def test_mixed_input_for_float_tensor(handler, manager):
    """TFS: json_tensor_test.cc MixedInputForFloatTensor"""
    body = '{"signature_name": "float", "instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}'
    key, request = _request_tensors(manager, body)
    assert key == "instances"
    _assert_proto(
        request["default"],
        """
        dtype: DT_FLOAT
        tensor_shape { dim { size: 7 } }
        float_val: 1 float_val: 2.0 float_val: 3 float_val: 4 float_val: 5.003
        float_val: 0.007 float_val: 0.0
        """,
    )
    assert _json_as_strings(_ok(handler, body)) == {
        "predictions": ["1.0", "2.0", "3.0", "4.0", "5.003", "0.007", "0.0"]
    }


def test_mixed_input_for_double_tensor(handler, manager):
    """TFS: json_tensor_test.cc MixedInputForDoubleTensor"""
    body = '{"signature_name": "double", "instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}'
    key, request = _request_tensors(manager, body)
    assert key == "instances"
    _assert_proto(
        request["default"],
        """
        dtype: DT_DOUBLE
        tensor_shape { dim { size: 7 } }
        double_val: 1.0 double_val: 2 double_val: 3 double_val: 4 double_val: 0.662
        double_val: 0 double_val: 0.0
        """,
    )
    assert _json_as_strings(_ok(handler, body)) == {
        "predictions": ["1.0", "2.0", "3.0", "4.0", "0.662", "0.0", "0.0"]
    }


def test_single_unnamed_tensor_with_signature(handler, manager):
    """TFS: json_tensor_test.cc SingleUnnamedTensorWithSignature"""
    body = '{"signature_name": "predict_images", "instances": [[1,2]]}'
    assert parse_predict_body(body.encode())[0] == "predict_images"
    key, request = _request_tensors(manager, body)
    assert key == "instances"
    _assert_proto(
        request["default"],
        "dtype: DT_INT32 tensor_shape { dim { size: 1 } dim { size: 2 } } int_val: 1 int_val: 2",
    )
    assert _json(_ok(handler, body)) == {"predictions": [[1, 2]]}


def test_tensor_from_non_null_terminated_buffer(handler, manager):
    """TFS: json_tensor_test.cc TensorFromNonNullTerminatedBuffer"""
    buffer = b'{"instances": [[1,2],[3,4],[5,6]]}X'
    body = memoryview(buffer)[:-1].tobytes()  # The body ends where the buffer's view ends.
    key, request = _request_tensors(manager, body.decode())
    assert key == "instances"
    _assert_proto(request["default"], INT_3X2)
    assert _json(_ok(handler, body)) == {"predictions": [[1, 2], [3, 4], [5, 6]]}


def test_single_unnamed_tensor_base64_scalars(handler, manager):
    """TFS: json_tensor_test.cc SingleUnnamedTensorBase64Scalars"""
    body = '{"signature_name": "string", "instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}'
    key, request = _request_tensors(manager, body)
    assert key == "instances"
    _assert_proto(
        request["default"],
        'dtype: DT_STRING tensor_shape { dim { size: 2 } } string_val: "hello" string_val: "world"',
    )
    assert _json(_ok(handler, body)) == {"predictions": ["hello", "world"]}


def test_single_unnamed_tensor_base64_lists(handler, manager):
    """TFS: json_tensor_test.cc SingleUnnamedTensorBase64Lists"""
    body = (
        '{"signature_name": "string", "instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}'
    )
    key, request = _request_tensors(manager, body)
    assert key == "instances"
    _assert_proto(
        request["default"],
        """
        dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 1 } }
        string_val: "hello" string_val: "world"
        """,
    )
    assert _json(_ok(handler, body)) == {"predictions": [["hello"], ["world"]]}


def test_single_named_tensor_base64(handler, manager):
    """TFS: json_tensor_test.cc SingleNamedTensorBase64"""
    body = (
        '{"signature_name": "string", "instances": '
        '[{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}'
    )
    key, request = _request_tensors(manager, body)
    assert key == "instances"
    _assert_proto(
        request["default"],
        """
        dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 2 } dim { size: 1 } }
        string_val: "hello" string_val: "world"
        """,
    )
    assert _json(_ok(handler, body)) == {"predictions": [[["hello"], ["world"]]]}


def test_multiple_named_tensor(handler, manager):
    """TFS: json_tensor_test.cc MultipleNamedTensor"""
    body = """{"signature_name": "multi", "instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}
    ]}"""
    key, request = _request_tensors(manager, body)
    assert key == "instances" and len(request) == 4
    _assert_proto(
        request["int_tensor"],
        """
        dtype: DT_INT32 tensor_shape { dim { size: 2 } dim { size: 3 } dim { size: 2 } }
        int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6
        int_val: 7 int_val: 8 int_val: 9 int_val: 0 int_val: 1 int_val: 2
        """,
    )
    _assert_proto(
        request["str_tensor"],
        """
        dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 2 } }
        string_val: "foo" string_val: "bar" string_val: "baz" string_val: "bat"
        """,
    )
    _assert_proto(
        request["float_tensor"],
        """
        dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 2 } }
        float_val: 1.0 float_val: NaN float_val: 2.0 float_val: Infinity
        """,
    )
    _assert_proto(
        request["dbl_tensor"],
        """
        dtype: DT_DOUBLE tensor_shape { dim { size: 2 } dim { size: 1 } }
        double_val: NaN double_val: 2.0
        """,
    )
    predictions = _json_as_strings(_ok(handler, body))["predictions"]
    assert predictions == [
        {
            "int_tensor": [["1", "2"], ["3", "4"], ["5", "6"]],
            "str_tensor": ["foo", "bar"],
            "float_tensor": ["1.0", "NaN"],
            "dbl_tensor": ["NaN"],
        },
        {
            "int_tensor": [["7", "8"], ["9", "0"], ["1", "2"]],
            "str_tensor": ["baz", "bat"],
            "float_tensor": ["2.0", "Infinity"],
            "dbl_tensor": ["2.0"],
        },
    ]


INT_1X3X2 = """
    dtype: DT_INT32
    tensor_shape { dim { size: 1 } dim { size: 3 } dim { size: 2 } }
    int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6
"""


@pytest.mark.parametrize(
    "inputs",
    ['{"int_tensor": [[[1,2],[3,4],[5,6]]]}', "[[[1,2],[3,4],[5,6]]]"],
    ids=["named", "skip explicitly specifying named input"],
)
def test_single_unnamed_tensor_columnar_format(handler, manager, inputs):
    """TFS: json_tensor_test.cc SingleUnnamedTensorColumnarFormat"""
    body = f'{{"signature_name": "columnar", "inputs": {inputs}}}'
    key, request = _request_tensors(manager, body)
    assert key == "inputs" and list(request) == ["int_tensor"]
    _assert_proto(request["int_tensor"], INT_1X3X2)
    assert _json(_ok(handler, body)) == {"outputs": [[[1, 2], [3, 4], [5, 6]]]}


def test_multiple_named_tensor_columnar_format(handler, manager):
    """TFS: json_tensor_test.cc MultipleNamedTensorColumnarFormat"""
    body = """{"signature_name": "columnar_multi", "inputs": {
        "int_tensor": [[[1,2],[3,4],[5,6]]],
        "str_tensor": ["foo", "bar"],
        "bin_tensor": {"b64": "aGVsbG8="}
    }}"""
    key, request = _request_tensors(manager, body)
    assert key == "inputs" and len(request) == 3
    _assert_proto(request["int_tensor"], INT_1X3X2)
    _assert_proto(
        request["str_tensor"],
        'dtype: DT_STRING tensor_shape { dim { size: 2 } } string_val: "foo" string_val: "bar"',
    )
    _assert_proto(request["bin_tensor"], 'dtype: DT_STRING tensor_shape {} string_val: "hello"')
    assert _json(_ok(handler, body)) == {
        "outputs": {
            "int_tensor": [[[1, 2], [3, 4], [5, 6]]],
            "str_tensor": ["foo", "bar"],
            "bin_tensor": "hello",
        }
    }


@pytest.mark.parametrize(
    "body, fragment",
    [
        pytest.param("", "document is empty", id="empty"),
        pytest.param(
            '{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}',
            "must be a string value",
            id="signature_name not a string",
        ),
        pytest.param(
            '{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}',
            "Not formatted correctly",
            id="both instances and inputs",
        ),
        pytest.param('{"instances": [[1,2],[3,4],[5,6,7]]}', "Expecting tensor size", id="sizes"),
        pytest.param('{"instances": [[1,2],[3,4],[[5,6]]]}', "Expecting shape", id="shapes"),
        pytest.param('{"instances": [1, [1]]}', "Expecting shape", id="scalar and list"),
        pytest.param('{"instances": [[1,2],["a", "b"]]}', "not of expected type", id="type"),
        pytest.param(
            f'{{"signature_name": "float", "instances": [{1.79769e308}]}}',
            "loss of precision",
            id="double max for float",
        ),
        pytest.param(
            '{"signature_name": "float", "instances": [16777217]}',
            "loss of precision",
            id="2^24+1 for float",
        ),
        pytest.param(
            '{"signature_name": "double", "instances": [9007199254740993]}',
            "loss of precision",
            id="2^53+1 for double",
        ),
    ],
)
def test_single_unnamed_tensor_errors(handler, body, fragment):
    """TFS: json_tensor_test.cc SingleUnnamedTensorErrors"""
    _error(handler, body, fragment)


@pytest.mark.parametrize(
    "body, fragment",
    [
        pytest.param(
            """{"signature_name": "int_str", "instances": [
                {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
                {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}""",
            "Expecting shape",
            id="different shapes across int_tensor instances",
        ),
        pytest.param(
            """{"signature_name": "int_str", "instances": [
                {"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},
                {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}""",
            "Expecting tensor size",
            id="different sizes across int_tensor instances",
        ),
        pytest.param(
            """{"signature_name": "int_str", "instances": [
                {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
                [1, 20, 30],
                {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}""",
            "Expecting object but got list",
            id="object then list",
        ),
        pytest.param(
            """{"signature_name": "str_only", "instances": [
                ["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}""",
            "Expecting value/list but got object",
            id="list then object",
        ),
    ],
)
def test_multiple_named_tensor_errors(handler, body, fragment):
    """TFS: json_tensor_test.cc MultipleNamedTensorErrors"""
    _error(handler, body, fragment)


# ----------------------------------------------------------------------------- MakeJsonFromTensors

INT_2X3X2 = """
    dtype: DT_INT32
    tensor_shape { dim { size: 2 } dim { size: 3 } dim { size: 2 } }
    int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6
    int_val: 7 int_val: 8 int_val: 9 int_val: 0 int_val: 1 int_val: 2
"""
INT_2X3X2_JSON = [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
STR_2X2_BYTES = """
    dtype: DT_STRING
    tensor_shape { dim { size: 2 } dim { size: 2 } }
    string_val: "hello" string_val: "world" string_val: "tf" string_val: "serving"
"""
B64_2X2 = [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]


def test_from_json_single_tensor(handler):
    """TFS: json_tensor_test.cc FromJsonSingleTensor"""
    tensor_map = {"int_tensor": INT_2X3X2}
    assert _json(_make_json(tensor_map, "predictions")) == {"predictions": INT_2X3X2_JSON}
    assert _json(_make_json(tensor_map, "outputs")) == {"outputs": INT_2X3X2_JSON}
    value = json.dumps(INT_2X3X2_JSON)
    rows = _ok(handler, f'{{"signature_name": "columnar", "instances": {value}}}')
    assert _json(rows) == {"predictions": INT_2X3X2_JSON}
    columns = _ok(handler, f'{{"signature_name": "columnar", "inputs": {value}}}')
    assert _json(columns) == {"outputs": INT_2X3X2_JSON}


def test_from_json_single_scalar_tensor(handler):
    """TFS: json_tensor_test.cc FromJsonSingleScalarTensor"""
    tensor_map = {
        "int_tensor": "dtype: DT_INT32 tensor_shape { dim { size: 5 } } "
        "int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5"
    }
    assert _json(_make_json(tensor_map, "predictions")) == {"predictions": [1, 2, 3, 4, 5]}
    assert _json(_make_json(tensor_map, "outputs")) == {"outputs": [1, 2, 3, 4, 5]}
    body = '{"signature_name": "columnar", "%s": [1, 2, 3, 4, 5]}'
    assert _json(_ok(handler, body % "instances")) == {"predictions": [1, 2, 3, 4, 5]}
    assert _json(_ok(handler, body % "inputs")) == {"outputs": [1, 2, 3, 4, 5]}


def test_from_json_single_bytes_tensor(handler):
    """TFS: json_tensor_test.cc FromJsonSingleBytesTensor"""
    tensor_map = {"str_tensor_bytes": STR_2X2_BYTES}
    assert _json(_make_json(tensor_map, "predictions")) == {"predictions": B64_2X2}
    body = '{"signature_name": "bytes", "instances": [["hello", "world"], ["tf", "serving"]]}'
    assert _json(_ok(handler, body)) == {"predictions": B64_2X2}


SIX_DIGITS_JSON = {"predictions": [["9e+06", "999999.0", "0.5"], ["0.0003", "3e-05", "555557.5"]]}


def test_from_json_single_float_tensor_six_digit_precision(handler):
    """TFS: json_tensor_test.cc FromJsonSingleFloatTensorSixDigitPrecision"""
    tensor_map = {
        "float_tensor": """
            dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 3 } }
            float_val: 9000000 float_val: 999999 float_val: 0.50000
            float_val: .0003 float_val: .00003 float_val: 555557.5
        """
    }
    assert _json_as_strings(_make_json(tensor_map, "predictions")) == SIX_DIGITS_JSON
    body = (
        '{"signature_name": "float", "instances": '
        "[[9000000, 999999, 0.50000], [0.0003, 0.00003, 555557.5]]}"
    )
    assert _json_as_strings(_ok(handler, body)) == SIX_DIGITS_JSON


NON_FINITE_JSON = {"predictions": [["NaN", "Infinity"], ["3.0", "-Infinity"]]}


def test_from_json_single_float_tensor_non_finite(handler):
    """TFS: json_tensor_test.cc FromJsonSingleFloatTensorNonFinite"""
    tensor_map = {
        "float_tensor": """
            dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 2 } }
            float_val: NaN float_val: Infinity float_val: 3 float_val: -Infinity
        """
    }
    assert _json_as_strings(_make_json(tensor_map, "predictions")) == NON_FINITE_JSON
    body = '{"signature_name": "float", "instances": [[NaN, Infinity], [3, -Infinity]]}'
    assert _json_as_strings(_ok(handler, body)) == NON_FINITE_JSON


def test_from_json_single_tensor_errors(handler):
    """TFS: json_tensor_test.cc FromJsonSingleTensorErrors"""
    assert "empty tensor map" in _make_json_error({})
    complex_tensor = (
        "dtype: DT_COMPLEX64 tensor_shape { dim { size: 2 } } scomplex_val: 1.0 scomplex_val: 2.0"
    )
    assert "tensor type: complex64" in _make_json_error({"tensor": complex_tensor})
    assert "no shape information" in _make_json_error({"tensor": "dtype: DT_INT32 int_val: 1"})
    complex_body = '{"signature_name": "complex", "instances": [1.0, 2.0]}'
    _error(handler, complex_body, "tensor type: complex64")
    _error(handler, '{"signature_name": "total", "instances": [1, 2]}', "no shape information")


NAMED_TENSORS = {
    "int_tensor": INT_2X3X2,
    "str_tensor": """
        dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 2 } }
        string_val: "foo" string_val: "bar" string_val: "baz" string_val: "bat"
    """,
    "float_tensor": """
        dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 1 } }
        float_val: 1.0 float_val: 2.0
    """,
    "double_scalar_tensor": """
        dtype: DT_DOUBLE tensor_shape { dim { size: 2 } } double_val: 8.0 double_val: 9.0
    """,
    "str_tensor_bytes": STR_2X2_BYTES,
}
NAMED_ROWS = [
    {
        "double_scalar_tensor": 8.0,
        "float_tensor": [1.0],
        "int_tensor": [[1, 2], [3, 4], [5, 6]],
        "str_tensor": ["foo", "bar"],
        "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
    },
    {
        "double_scalar_tensor": 9.0,
        "float_tensor": [2.0],
        "int_tensor": [[7, 8], [9, 0], [1, 2]],
        "str_tensor": ["baz", "bat"],
        "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
    },
]
NAMED_COLUMNS = {
    "double_scalar_tensor": [8.0, 9.0],
    "float_tensor": [[1.0], [2.0]],
    "int_tensor": INT_2X3X2_JSON,
    "str_tensor": [["foo", "bar"], ["baz", "bat"]],
    "str_tensor_bytes": B64_2X2,
}


def test_from_json_multiple_named_tensors(handler):
    """TFS: json_tensor_test.cc FromJsonMultipleNamedTensors"""
    assert _json(_make_json(NAMED_TENSORS, "predictions")) == {"predictions": NAMED_ROWS}
    assert _json(_make_json(NAMED_TENSORS, "outputs")) == {"outputs": NAMED_COLUMNS}
    columns = dict(NAMED_COLUMNS, str_tensor_bytes=[["hello", "world"], ["tf", "serving"]])
    body = {"signature_name": "named_outputs", "inputs": columns}
    assert _json(_ok(handler, json.dumps(body))) == {"outputs": NAMED_COLUMNS}
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    body = {"signature_name": "named_outputs", "instances": rows}
    assert _json(_ok(handler, json.dumps(body))) == {"predictions": NAMED_ROWS}


def test_from_json_multiple_named_tensors_errors(handler):
    """TFS: json_tensor_test.cc FromJsonMultipleNamedTensorsErrors"""
    tensor_map = {
        "int_tensor": """
            dtype: DT_INT32 tensor_shape { dim { size: 2 } dim { size: 3 } }
            int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6
        """,
        "str_tensor": """
            dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 3 } }
            string_val: "foo" string_val: "bar" string_val: "baz"
        """,
    }
    assert "inconsistent batch size" in _make_json_error(tensor_map)
    body = {
        "signature_name": "uneven",
        "instances": [
            {"int_tensor": [1, 2, 3], "str_tensor": ["foo", "bar", "baz"]},
            {"int_tensor": [4, 5, 6], "str_tensor": ["foo", "bar", "baz"]},
        ],
    }
    _error(handler, json.dumps(body), "inconsistent batch size")


def test_from_json_single_zero_batch_tensor():
    """TFS: json_tensor_test.cc FromJsonSingleZeroBatchTensor"""
    tensor_map = {"int_tensor": "dtype: DT_INT32 tensor_shape { dim { size: 0 } dim { size: 2 } }"}
    assert _json(_make_json(tensor_map, "predictions")) == {"predictions": []}


def test_from_json_multiple_zero_batch_tensors():
    """TFS: json_tensor_test.cc FromJsonMultipleZeroBatchTensors"""
    tensor_map = {
        "str_tensor": "dtype: DT_STRING "
        "tensor_shape { dim { size: 0 } dim { size: 1 } dim { size: 2 } }",
        "float_tensor": "dtype: DT_FLOAT "
        "tensor_shape { dim { size: 0 } dim { size: 3 } dim { size: 4 } }",
    }
    assert _json(_make_json(tensor_map, "predictions")) == {"predictions": []}


def test_from_json_multiple_zero_batch_tensors_errors():
    """TFS: json_tensor_test.cc FromJsonMultipleZeroBatchTensorsErrors"""
    tensor_map = {
        "int_tensor": "dtype: DT_INT32 tensor_shape { dim { size: 0 } dim { size: 2 } }",
        "str_tensor": 'dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 2 } } '
        'string_val: "foo" string_val: "bar"',
    }
    assert "inconsistent batch size" in _make_json_error(tensor_map)


# ----------------------------------------------------------------------------- classify / regress

REQUEST_TYPES = [
    pytest.param(
        (json_examples.classification_request_from_json, classification_pb2.ClassificationRequest),
        id="ClassificationRequest",
    ),
    pytest.param(
        (json_examples.regression_request_from_json, regression_pb2.RegressionRequest),
        id="RegressionRequest",
    ),
]


def _assert_request(actual, expected_text, request_type):
    """MessageDifferencer with NaN equal to NaN: text_format prints both NaNs as "nan"."""
    expected = text_format.Parse(expected_text, request_type())
    assert text_format.MessageToString(actual) == text_format.MessageToString(expected)


@pytest.mark.parametrize("request_type", REQUEST_TYPES)
def test_request_no_context(request_type):
    """TFS: json_tensor_test.cc ClassifyRegressRequestTest RequestNoContext"""
    fill, proto_type = request_type
    request = fill(
        b"""{"examples": [
            {"names": ["foo", "bar"], "ratings": [8.0, 9.0], "age": 20},
            {"names": ["baz"], "ratings": 6.0}
        ]}"""
    )
    _assert_request(
        request,
        """
        input { example_list {
          examples { features {
            feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
            feature { key: "ratings" value { float_list { value: 8.0 value: 9.0 } } }
            feature { key: "age" value { int64_list { value: 20 } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "baz" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } }
          } }
        } }
        """,
        proto_type,
    )


@pytest.mark.parametrize("request_type", REQUEST_TYPES)
def test_request_with_context_and_signature(request_type):
    """TFS: json_tensor_test.cc ClassifyRegressRequestTest RequestWithContextAndSignature"""
    fill, proto_type = request_type
    request = fill(
        b"""{
            "signature_name": "custom_signture",
            "context": {"query": "pizza", "location": ["sfo"]},
            "examples": [
                {"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},
                {"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0,
                 "intboolmix": [1, true, false]},
                {"names": "bar", "ratings": -Infinity}
            ]
        }"""
    )
    _assert_request(
        request,
        """
        model_spec { signature_name: "custom_signture" }
        input { example_list_with_context {
          context { features {
            feature { key: "query" value { bytes_list { value: "pizza" } } }
            feature { key: "location" value { bytes_list { value: "sfo" } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
            feature { key: "ratings"
                      value { float_list { value: 8.0 value: 9.0 value: NaN value: Infinity } } }
            feature { key: "age" value { int64_list { value: 20 } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "baz" value: "hello" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } }
            feature { key: "intboolmix" value { int64_list { value: 1 value: 1 value: 0 } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "bar" } } }
            feature { key: "ratings" value { float_list { value: -Infinity } } }
          } }
        } }
        """,
        proto_type,
    )


@pytest.mark.parametrize("request_type", REQUEST_TYPES)
@pytest.mark.parametrize(
    "body, fragment",
    [
        pytest.param(
            '{"signature_name": ["hello"], "examples": [{"names": ["foo", "bar"]}]}',
            "'signature_name' key must be a string",
            id="signature_name not a string",
        ),
        pytest.param(
            '{"context": [{"names": ["foo", "bar"]}]}',
            "Example must be JSON object",
            id="context a list",
        ),
        pytest.param('{"examples": {"names": ["foo", "bar"]}}', "list/array", id="examples object"),
        pytest.param(
            '{"examples": [[{"names": ["foo", "bar"]}]]}',
            "Example must be JSON object",
            id="example a list",
        ),
        pytest.param(
            '{"examples": [{"names": [10, null]}]}',
            "names has element with unexpected JSON type: Null",
            id="null",
        ),
        pytest.param(
            '{"examples": [{"names": [10, 10.0]}]}',
            "feature: names expecting type: int64",
            id="int then float",
        ),
        pytest.param(
            '{"examples": [{"names": [10, {"test": 10}]}]}',
            "names has element with unexpected JSON type: Object",
            id="object",
        ),
        pytest.param(
            '{"examples": [{"names": [[10], 20]}]}',
            "names has element with unexpected JSON type: Array",
            id="nested list",
        ),
        pytest.param(
            '{"examples": [{"names": [20, 18446744073709551603]}]}',
            "Only int64 is supported",
            id="uint64",
        ),
        pytest.param(
            f'{{"examples": [{{"names": {1.79769e308}}}]}}',
            "loss of precision",
            id="double max",
        ),
    ],
)
def test_classify_regress_json_errors(request_type, body, fragment):
    """TFS: json_tensor_test.cc ClassifyRegressRequestTest JsonErrors"""
    fill, _ = request_type
    with pytest.raises(ServingError) as raised:
        fill(body.encode())
    assert raised.value.code == "INVALID_ARGUMENT"
    assert fragment in raised.value.message


def test_json_from_classification_result():
    """TFS: json_tensor_test.cc ClassifyRegressnResultTest JsonFromClassificationResult"""
    result = text_format.Parse(
        """
        classifications {
          classes { label: "car" score: 0.2 }
          classes { label: "bike" score: 0.7 }
          classes { label: "bus" score: 0.1 }
        }
        classifications {
          classes { label: "car" score: 0.7 }
          classes { label: "bike" score: 0.1 }
          classes { label: "bus" score: 0.2 }
        }
        """,
        classification_pb2.ClassificationResult(),
    )
    written = tensors.dumps(json_examples.classification_result_to_json(result))
    assert _json(written) == {
        "results": [
            [["car", 0.2], ["bike", 0.7], ["bus", 0.1]],
            [["car", 0.7], ["bike", 0.1], ["bus", 0.2]],
        ]
    }


def test_json_from_regression_result():
    """TFS: json_tensor_test.cc ClassifyRegressnResultTest JsonFromRegressionResult"""
    result = text_format.Parse(
        "regressions { value: 0.2 } regressions { value: 0.9 } regressions { value: 1.0 }",
        regression_pb2.RegressionResult(),
    )
    written = tensors.dumps(json_examples.regression_result_to_json(result))
    assert _json(written) == {"results": [0.2, 0.9, 1.0]}


def test_json_from_regression_result_with_non_finite():
    """TFS: json_tensor_test.cc ClassifyRegressnResultTest JsonFromRegressionResultWithNonFinite"""
    result = text_format.Parse(
        """
        regressions { value: 0.2 } regressions { value: Infinity } regressions { value: 1.0 }
        regressions { value: -Infinity } regressions { value: NaN }
        """,
        regression_pb2.RegressionResult(),
    )
    written = tensors.dumps(json_examples.regression_result_to_json(result))
    assert _json_as_strings(written) == {"results": ["0.2", "Infinity", "1.0", "-Infinity", "NaN"]}


def test_json_from_result_errors():
    """TFS: json_tensor_test.cc ClassifyRegressnResultTest JsonFromResultErrors"""
    with pytest.raises(ServingError, match="empty ClassificationResults") as raised:
        json_examples.classification_result_to_json(classification_pb2.ClassificationResult())
    assert raised.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ServingError, match="empty RegressionResults") as raised:
        json_examples.regression_result_to_json(regression_pb2.RegressionResult())
    assert raised.value.code == "INVALID_ARGUMENT"


# ----------------------------------------------------------------------------- MakeJsonFromStatus


def test_status_ok_writes_no_error(handler):
    """TFS: json_tensor_test.cc MakeJsonFromTensors StatusOK (an OK answer has no "error")."""
    assert "error" not in _json(_ok(handler, '{"instances": [1]}'))


@pytest.mark.parametrize("message", ['Bad key: "key"', "Bad key: 'key'"])
def test_status_error(message):
    """TFS: json_tensor_test.cc MakeJsonFromTensors StatusError"""
    assert _json(error_body(message).decode("utf-8")) == {"error": message}


# ----------------------------------------------------------------------------- issue's deviations


def test_deep_nesting_under_an_unused_key_is_accepted(handler):
    """TF Serving reads a body with 500,000-deep nesting under a key it does not use."""
    depth = 500_000
    body = '{"instances": [[1, 2]], "unused": ' + "[" * depth + "]" * depth + "}"
    assert _json(_ok(handler, body)) == {"predictions": [[1, 2]]}


@pytest.mark.parametrize(
    "value",
    ["[" * 100_000 + "]" * 100_000, "[" + '{"x":' * 5000 + "1" + "}" * 5000 + "]"],
    ids=["lists", "objects"],
)
def test_deep_nesting_under_instances_is_a_clear_400(handler, value):
    message = _error(handler, '{"instances": ' + value + "}", "is nested more than")
    assert "'instances'" in message


def test_deep_nesting_within_reach_of_json_is_a_rank_error(handler):
    message = _error(handler, '{"instances": ' + "[" * 300 + "]" * 300 + "}", "nested more than 64")
    assert "at most 64 dimensions" in message


@pytest.mark.parametrize(
    "body, fragment",
    [
        pytest.param(
            '{"instances": [[1, 2]', "Missing a comma or ']' after an array element.", id="open"
        ),
        pytest.param('{"instances": [1,]}', "Invalid value.", id="trailing comma"),
        pytest.param(
            '{"instances" [1]}', "Missing a colon after a name of object member.", id="colon"
        ),
        pytest.param(
            '{"instances": [1] "x": 1}',
            "Missing a comma or '}' after an object member.",
            id="comma",
        ),
        pytest.param("{instances: [1]}", "Missing a name for object member.", id="name"),
        pytest.param('{"instances": [1]} [2]', "must not be followed by other values.", id="extra"),
        pytest.param(
            '{"instances": ["a\\qb"]}', "Invalid escape character in string.", id="escape"
        ),
        pytest.param(
            '{"instances": ["ab', "Missing a closing quotation mark in string.", id="string"
        ),
        pytest.param(
            '{"instances": [1e999]}', "Number too big to be stored in double.", id="too big"
        ),
        pytest.param("  ", "The document is empty.", id="blank"),
    ],
)
def test_json_parse_errors_are_worded_as_rapidjson(handler, body, fragment):
    message = _error(handler, body, fragment)
    assert message.startswith("JSON Parse error: ") and " at offset: " in message


def test_body_not_an_object(handler):
    _error(handler, "[1, 2]", "Is not object")


def test_floats_beyond_float32_are_refused_as_tf_serving_does(handler):
    """TF Serving's IsLosslessDecimal refuses a finite value beyond float's range (no infinity)."""
    _error(handler, '{"signature_name": "float", "instances": [1e39]}', "loss of precision")
    _error(handler, '{"signature_name": "float", "instances": [-1e39]}', "loss of precision")
    body = '{"signature_name": "float", "instances": [3.4028234663852886e38, -Infinity]}'
    assert _json_as_strings(_ok(handler, body)) == {"predictions": ["3.40282347e+38", "-Infinity"]}


def test_first_of_duplicate_keys_wins(handler):
    answer = _ok(handler, '{"instances": [[1, 2]], "instances": 7}')
    assert _json(answer) == {"predictions": [[1, 2]]}


@pytest.mark.parametrize(
    "value, dtype, written",
    [
        (0.1, np.float32, "0.1"),
        (1 / 3, np.float32, "0.333333343"),
        (1 / 3, np.float64, "0.33333333333333331"),
        (1234567.1, np.float64, "1234567.1000000001"),
        (100.0, np.float64, "100.0"),
        (1e20, np.float32, "1e+20"),
        (-0.0, np.float32, "-0.0"),
        (16777216.0, np.float32, "16777216.0"),
    ],
)
def test_floats_are_written_as_tf_serving_writes_them(value, dtype, written):
    """TF Serving's WriteDecimal: "%g" when it round-trips, else max_digits10; ".0" if whole."""
    assert tensors.dumps(tensors.array_to_json(np.array([value], dtype))) == f"[{written}]".encode()


@pytest.mark.parametrize(
    "dtype", [np.float16, tf.bfloat16.as_numpy_dtype], ids=["half", "bfloat16"]
)
def test_half_precision_outputs_are_written_as_their_float32_value(dtype):
    value = np.array([0.5, 3.0], dtype)
    assert tensors.dumps(tensors.array_to_json(value)) == b"[0.5,3.0]"


# ----------------------------------------------------------------------------- gRPC outputs

ROUND_TRIP_ARRAYS = {
    "float32": np.array([[0.1, -2.5, np.inf], [np.nan, 0.0, 3e38]], np.float32),
    "float64": np.array([[0.1, -2.5], [1e300, np.nan]], np.float64),
    "half": np.array([0.1, -2.5, 65504.0, np.inf], np.float16),
    "bfloat16": np.array([[0.1, -2.5], [1e38, 3.0]], tf.bfloat16.as_numpy_dtype),
    "int8": np.array([-128, 0, 127], np.int8),
    "uint8": np.array([0, 255], np.uint8),
    "int16": np.array([-32768, 32767], np.int16),
    "uint16": np.array([0, 65535], np.uint16),
    "int32": np.array([[-(2**31), 2**31 - 1]], np.int32),
    "int64": np.array([-(2**63), 2**63 - 1], np.int64),
    "uint32": np.array([0, 2**32 - 1], np.uint32),
    "uint64": np.array([0, 2**64 - 1], np.uint64),
    "bool": np.array([[True, False], [False, True]]),
    "complex64": np.array([1 + 2j, -3.5 - 0.25j], np.complex64),
    "complex128": np.array([[1e300 + 2j], [-3.5 - 1e-300j]], np.complex128),
    "string": np.array([[b"a", b"\xff\x00"], [b"", b"long" * 10]], object),
    "scalar": np.array(7.5, np.float32),
    "empty": np.zeros((0, 3), np.float32),
}
VALUE_FIELDS = {
    "float32": "float_val",
    "float64": "double_val",
    "half": "half_val",
    "bfloat16": "half_val",
    "int8": "int_val",
    "uint8": "int_val",
    "int16": "int_val",
    "uint16": "int_val",
    "int32": "int_val",
    "int64": "int64_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "bool": "bool_val",
    "complex64": "scomplex_val",
    "complex128": "dcomplex_val",
    "string": "string_val",
    "scalar": "float_val",
    "empty": "float_val",
}


def _assert_same_array(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.tobytes() == expected.tobytes()  # Exact, NaN included.


@pytest.mark.parametrize("name", list(ROUND_TRIP_ARRAYS))
def test_grpc_outputs_use_the_typed_field_and_round_trip(name):
    array = ROUND_TRIP_ARRAYS[name]
    proto = tensors.array_to_tensor_proto(array)
    assert not proto.tensor_content
    fields = [field.name for field, _ in proto.ListFields() if field.name.endswith("_val")]
    assert fields == ([VALUE_FIELDS[name]] if array.size else [])
    assert [dim.size for dim in proto.tensor_shape.dim] == list(array.shape)
    _assert_same_array(tf.make_ndarray(proto), array)
    _assert_same_array(tensors.tensor_proto_to_array(proto, name), array)


@pytest.mark.parametrize("name", ["half", "bfloat16"])
def test_half_val_holds_the_bit_patterns_as_tensorflow_writes_them(name):
    array = ROUND_TRIP_ARRAYS[name]
    proto = tensors.array_to_tensor_proto(array)
    assert list(proto.half_val) == array.reshape(-1).view(np.uint16).tolist()


@pytest.mark.parametrize("name", list(ROUND_TRIP_ARRAYS))
def test_grpc_outputs_in_tensor_content_round_trip(name):
    array = ROUND_TRIP_ARRAYS[name]
    proto = tensors.array_to_tensor_proto(array, tensor_content=True)
    fields = [field.name for field, _ in proto.ListFields() if field.name.endswith("_val")]
    if name == "string":  # Strings always travel in string_val.
        assert fields == ["string_val"] and not proto.tensor_content
    else:
        assert not fields and proto.tensor_content == np.ascontiguousarray(array).tobytes()
    _assert_same_array(tensors.tensor_proto_to_array(proto, name), array)


def test_grpc_output_of_a_non_contiguous_array():
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T
    for tensor_content in (False, True):
        proto = tensors.array_to_tensor_proto(array, tensor_content=tensor_content)
        _assert_same_array(tf.make_ndarray(proto), np.ascontiguousarray(array))


def test_json_nan_and_infinity_tokens_round_trip(handler):
    body = '{"signature_name": "double", "inputs": [NaN, Infinity, -Infinity, 1.5]}'
    values = _json(_ok(handler, body))["outputs"]
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 1.5]
