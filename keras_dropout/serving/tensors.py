"""Tensor encodings of TF Serving's APIs, to and from NumPy arrays.

Two encodings meet here:

- REST JSON, read and written as TF Serving's `util/json_tensor.cc` does, with its error
  messages (its `json_tensor_test.cc` is the specification).
  - Reading: `parse_json_request` reads a body as rapidjson does for TF Serving: `NaN`,
    `Infinity` and `-Infinity` are numbers, a number beyond a double is a parse error, the
    first of duplicate keys wins, bytes that are not UTF-8 pass through into string tensors,
    and syntax errors are worded as rapidjson words them ("JSON Parse error: Invalid value. at
    offset: 7"). Nesting is unbounded: a body nested deeper than Python's `json` recurses is
    read again without recursion, so a deep value under a key the request does not use is
    accepted and one under a key it uses gets a clear error.
  - Row format (`"instances"`): a list with one element per row; for a signature with several
    inputs every element is an object keyed by input name. Every element is one tensor (its
    shape read from the first element at each depth) and all must have the same shape; they
    are stacked on a new batch dimension, so scalar inputs cannot be sent this way. Columnar
    format (`"inputs"`): an object keyed by input name, or the bare value when the signature has
    one input; scalars allowed. `{"b64": "..."}` carries bytes for string tensors. Shapes are
    not checked against the signature: that is the graph's business, as in TF Serving.
  - JSON numbers are converted as TF Serving converts them: integer dtypes take integer tokens
    only (`1.0` is not an int32), floating dtypes take any number but refuse a value they
    cannot hold exactly ("Cannot convert JSON value: 16777217 to float without loss of
    precision": integers beyond the mantissa, finite values beyond the dtype's range).
  - Writing: `dumps` writes floats as TF Serving does (six significant digits when they
    round-trip in the value's own precision, else nine for float, seventeen for double; ".0"
    on whole numbers: `9e+06`, `999999.0`, `555557.5`). `array_to_json` marks float32 values
    (`Float32List`, `Float32Value`) so `dumps` knows their precision; the REST API must write
    its answers with `dumps` (Python's `json` would write float32 values as doubles).
- gRPC `TensorProto`. As in TF Serving these are not cast: the dtype must be the signature's. A
  proto is checked before anything is allocated: its shape must be fully defined with no
  negative dimension, its values must sit in its dtype's field, and (given `max_bytes`) what it
  declares must fit the limit, since a proto with one value and a huge shape would otherwise
  expand to that shape. Outputs fill the dtype's typed field (`float_val`, `half_val` with the
  bit patterns of half and bfloat16, ...) as TF Serving does, or `tensor_content` with
  `--enable_serialization_as_tensor_content`.

Nothing here knows about models, versions or HTTP: callers pass the signature's input specs
(`tf.TensorSpec` keyed by input name) and get arrays or JSON-ready Python values back.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from json.decoder import scanstring
from json.encoder import encode_basestring_ascii

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from keras_dropout.serving.errors import ServingError

# TF Serving writes a string output as {"b64": ...} when its name ends with this suffix.
BYTES_SUFFIX = "_bytes"

# The most dimensions the running NumPy holds (64 since NumPy 2, 32 before): a JSON value nested
# deeper, or a TensorProto of a higher rank, is refused.
MAX_JSON_RANK = MAX_PROTO_RANK = 64 if int(np.__version__.split(".")[0]) >= 2 else 32

# Error texts quote a JSON value up to this many characters (TF Serving quotes it whole).
_QUOTE_CHARS = 60
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


# ----------------------------------------------------------------------------- reading JSON


class _SyntaxError(Exception):
    """A JSON syntax error as rapidjson reports it: its message and character offset."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.message = message
        self.offset = offset


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
# Python's json reads these three as numbers, as rapidjson's kParseNanAndInfFlag does.
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_MISSING_COMMA = {
    "]": "Missing a comma or ']' after an array element.",
    "}": "Missing a comma or '}' after an object member.",
}
_STRING_ERRORS = {
    "Unterminated string": "Missing a closing quotation mark in string.",
    "Invalid control character": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}
_TOO_BIG = "Number too big to be stored in double."


class _NumberTooBig(ValueError):
    pass


def _checked_float(token: str) -> float:
    value = float(token)
    if math.isinf(value):  # rapidjson refuses what Python's json rounds to infinity.
        raise _NumberTooBig(token)
    return value


def _integer_too_big(token: str) -> bool:
    # rapidjson holds integers beyond 64 bits as doubles, so they too must fit a double.
    return len(token) > 310 or abs(int(token)) > sys.float_info.max


def _first_wins(pairs: list) -> dict:
    """An object's members; of duplicate keys the first wins, as rapidjson's FindMember finds it."""
    result = dict(pairs)
    if len(result) != len(pairs):
        result = {}
        for key, value in pairs:
            result.setdefault(key, value)
    return result


def _skip_whitespace(text: str, pos: int) -> int:
    if text[pos : pos + 1] in (" ", "\t", "\n", "\r"):
        return _WHITESPACE.match(text, pos).end()
    return pos


def _string(text: str, pos: int) -> tuple[str, int]:
    """The JSON string whose opening quote is at `pos`, and the position past its closing one."""
    try:
        return scanstring(text, pos + 1, True)
    except json.JSONDecodeError as error:
        for prefix, message in _STRING_ERRORS.items():
            if error.msg.startswith(prefix):
                offset = len(text) if prefix == "Unterminated string" else error.pos
                raise _SyntaxError(message, offset) from None
        raise _SyntaxError("Invalid value.", error.pos) from None


def _member_name(text: str, pos: int) -> tuple[str, int]:
    """The name of the object member starting at `pos`, and the position past its colon."""
    if not text.startswith('"', pos):
        raise _SyntaxError("Missing a name for object member.", pos)
    name, pos = _string(text, pos)
    pos = _skip_whitespace(text, pos)
    if not text.startswith(":", pos):
        raise _SyntaxError("Missing a colon after a name of object member.", pos)
    return name, pos + 1


def _scalar_end(text: str, pos: int) -> int:
    for literal in _LITERALS:
        if text.startswith(literal, pos):
            return pos + len(literal)
    match = _NUMBER.match(text, pos)
    if match is None:
        raise _SyntaxError("Invalid value.", pos)
    end = match.end()
    following = text[end : end + 1]
    if match.group(1) is None and following == ".":
        raise _SyntaxError("Miss fraction part in number.", end + 1)
    if match.group(2) is None and following in ("e", "E"):
        raise _SyntaxError("Miss exponent in number.", end + 1)
    token = match.group()
    if match.group(1) or match.group(2):
        too_big = math.isinf(float(token))
    else:
        too_big = _integer_too_big(token)
    if too_big:
        raise _SyntaxError(_TOO_BIG, pos)
    return end


def _value_end(text: str, pos: int) -> int:
    """The end of the JSON value starting at or after `pos`, checking its syntax.

    Iterative, so any depth is fine; raises `_SyntaxError` worded as rapidjson words it.
    """
    closers = []  # The closing bracket of each open container, innermost last.
    while True:
        pos = _skip_whitespace(text, pos)
        char = text[pos : pos + 1]
        if char == "[":
            pos = _skip_whitespace(text, pos + 1)
            if not text.startswith("]", pos):
                closers.append("]")
                continue
            pos += 1
        elif char == "{":
            pos = _skip_whitespace(text, pos + 1)
            if not text.startswith("}", pos):
                pos = _member_name(text, pos)[1]
                closers.append("}")
                continue
            pos += 1
        elif char == '"':
            pos = _string(text, pos)[1]
        else:
            pos = _scalar_end(text, pos)
        # A value ended: close containers until one continues with a comma.
        while closers:
            pos = _skip_whitespace(text, pos)
            char = text[pos : pos + 1]
            if char == closers[-1]:
                closers.pop()
                pos += 1
            elif char == ",":
                pos += 1
                if closers[-1] == "}":
                    pos = _member_name(text, _skip_whitespace(text, pos))[1]
                break
            else:
                raise _SyntaxError(_MISSING_COMMA[closers[-1]], pos)
        else:
            return pos


def _document_end(text: str, pos: int) -> None:
    pos = _skip_whitespace(text, pos)
    if pos != len(text):
        raise _SyntaxError("The document root must not be followed by other values.", pos)


def _parse_error(text: str, fallback: Exception) -> ServingError:
    """The JSON Parse error TF Serving reports for a body Python's json refused."""
    try:
        start = _skip_whitespace(text, 0)
        if start == len(text):
            raise _SyntaxError("The document is empty.", start)
        _document_end(text, _value_end(text, start))
    except _SyntaxError as error:
        return _invalid(f"JSON Parse error: {error.message} at offset: {error.offset}")
    return _invalid(f"JSON Parse error: {fallback}")


def _loads(text: str):
    # Integers are left to Python's json (a hook on every token would slow every body): one
    # beyond a double is refused where it is converted (`_floats`), not as a parse error.
    return json.loads(text, object_pairs_hook=_first_wins, parse_float=_checked_float)


def _members_without_recursion(text: str, keys: Collection[str]) -> dict | None:
    """The top-level object's members named in `keys`; None when the body is not an object.

    For bodies nested deeper than Python's json recurses: the structure is walked iteratively,
    members not in `keys` are only checked, and each wanted member is read on its own.
    """
    pos = _skip_whitespace(text, 0)
    if not text.startswith("{", pos):
        _document_end(text, _value_end(text, pos))
        return None
    members = {}
    pos = _skip_whitespace(text, pos + 1)
    if text.startswith("}", pos):
        _document_end(text, pos + 1)
        return members
    while True:
        key, start = _member_name(text, pos)
        start = _skip_whitespace(text, start)
        end = _value_end(text, start)
        if key in keys and key not in members:
            try:
                members[key] = _loads(text[start:end])
            except RecursionError:
                raise _invalid(
                    f"JSON Value of '{key}' is nested more than {sys.getrecursionlimit()} levels "
                    f"deep, too deep to read; a tensor has at most {MAX_JSON_RANK} dimensions"
                ) from None
        pos = _skip_whitespace(text, end)
        if text.startswith("}", pos):
            _document_end(text, pos + 1)
            return members
        if not text.startswith(",", pos):
            raise _SyntaxError(_MISSING_COMMA["}"], pos)
        pos = _skip_whitespace(text, pos + 1)


def parse_json_request(body: bytes | str, keys: Collection[str]) -> tuple[str, dict]:
    """Reads a REST request body as TF Serving does: `(signature_name, members)`.

    Args:
        body: the request body.
        keys: the top-level members the request uses ("instances", "inputs", "examples", ...);
            others are checked for syntax only.

    Returns:
        The optional "signature_name" ("" when absent) and the members named in `keys` that the
        body has.

    Raises:
        ServingError: INVALID_ARGUMENT for an empty or malformed body ("JSON Parse error: ..."),
            a body that is not an object, a "signature_name" that is not a string, or a wanted
            member nested too deeply to read.
    """
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    text = body if isinstance(body, str) else body.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):  # rapidjson's UTF-8 stream skips a byte order mark.
        text = text[1:]
    wanted = {"signature_name", *keys}
    try:
        document = _loads(text)
        if isinstance(document, dict):
            document = {key: value for key, value in document.items() if key in wanted}
    except RecursionError:
        try:
            document = _members_without_recursion(text, wanted)
        except _SyntaxError as error:
            raise _invalid(f"JSON Parse error: {error.message} at offset: {error.offset}") from None
    except ValueError as error:  # JSONDecodeError, _NumberTooBig, an over-long integer.
        raise _parse_error(text, error) from None
    if not isinstance(document, dict):
        raise _invalid(
            f"JSON Value: {_quote(text.strip())} Is not object (a request body must be a JSON "
            "object)"
        )
    signature_name = document.pop("signature_name", "")
    if not isinstance(signature_name, str):
        raise _invalid(
            f"JSON Value: {json_value_text({'signature_name': signature_name, **document})} not "
            "formatted correctly. 'signature_name' key must be a string value."
        )
    return signature_name, document


def is_b64_object(value) -> bool:
    """True for `{"b64": "<base64 text>"}`, TF Serving's encoding of bytes in JSON."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64_object(value) -> bytes:
    """The bytes of a `{"b64": ...}` object (padded base64); INVALID_ARGUMENT otherwise."""
    if not is_b64_object(value):
        raise _invalid(
            f"JSON Value: {json_value_text(value)} not formatted correctly for base64 data"
        )
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("Unable to base64 decode") from None


def json_string_bytes(text: str) -> bytes:
    """A JSON string as the bytes the client sent (bytes that were not UTF-8 included)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # A lone surrogate escaped as \\udXXX in the JSON text.
        return text.encode("utf-8", "surrogatepass")


# ----------------------------------------------------------------------------- writing JSON


class Float32Value(float):
    """A float32 value in a JSON-ready value: `dumps` writes it with float32's precision."""

    __slots__ = ()


class Float32List(list):
    """A list of float32 values (as Python floats): `dumps` writes them with float32's precision.

    Marks a whole innermost list of an output at once, which costs far less than marking each
    value with `Float32Value`.
    """

    __slots__ = ()


def _float_tokens(values: list, dtype) -> list[str]:
    """TF Serving's WriteDecimal for each value, in `dtype`'s precision (float32 or float64).

    Six significant digits ("%g", absl::StrCat) when they read back as the same value, else
    max_digits10 (9 or 17); ".0" on whole numbers outside scientific notation; NaN, Infinity,
    -Infinity tokens.
    """
    exact = np.asarray(values, dtype=np.float64).astype(dtype)
    doubles = exact.astype(np.float64).tolist()
    tokens = ["%.6g" % value for value in doubles]
    finite = np.isfinite(exact)
    with np.errstate(over="ignore"):  # Six digits rounded up past the largest float: inf.
        read_back = np.array(tokens, dtype=np.float64).astype(dtype)
    wide = "%.9g" if dtype == np.float32 else "%.17g"
    for index in np.flatnonzero(finite & (read_back != exact)).tolist():
        tokens[index] = wide % doubles[index]
    tokens = [token if "." in token or "e" in token else token + ".0" for token in tokens]
    for index in np.flatnonzero(~finite).tolist():
        value = doubles[index]
        tokens[index] = "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    return tokens


def _scalar_token(value) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if isinstance(value, (Float32Value, np.float16, np.float32)):
        return _float_tokens([value], np.float32)[0]
    if isinstance(value, (float, np.floating)):
        return _float_tokens([value], np.float64)[0]
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, np.bool_):
        return "true" if value else "false"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _list_token(values: list) -> str | None:
    """A list of scalars of one type written at once (most of an output's JSON); else None."""
    if not values:
        return "[]"
    kinds = set(map(type, values))
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind is Float32Value or (kind is float and isinstance(values, Float32List)):
        tokens = _float_tokens(values, np.float32)
    elif kind is float:
        tokens = _float_tokens(values, np.float64)
    elif kind is int:
        tokens = map(int.__repr__, values)
    elif kind is bool:
        tokens = ("true" if value else "false" for value in values)
    elif kind is str:
        tokens = map(encode_basestring_ascii, values)
    else:
        return None
    return "[" + ",".join(tokens) + "]"


_END = object()


def _write(value, limit: int | None = None) -> str:
    """JSON text of `value` (dicts, lists, tuples, scalars), without recursion.

    With `limit`, stops once the text is longer and returns it cut to `limit` characters.
    """
    out = []
    length = 0
    stack = []  # [iterator, is_object, members written] per open container.
    item = value
    while True:
        if isinstance(item, dict):
            out.append("{")
            stack.append([iter(item.items()), True, 0])
        elif isinstance(item, (list, tuple)):
            if limit is not None and len(item) > limit:
                item = type(item)(item[:limit])  # Already longer than the limit once written.
            token = _list_token(item) if isinstance(item, list) else None
            if token is None:
                out.append("[")
                stack.append([iter(item), False, 0])
            else:
                out.append(token)
        else:
            out.append(_scalar_token(item))
        if limit is not None:
            length += len(out[-1])
            if length > limit:
                return "".join(out)[:limit]
        while stack:
            frame = stack[-1]
            following = next(frame[0], _END)
            if following is _END:
                out.append("}" if frame[1] else "]")
                stack.pop()
                continue
            separator = "," if frame[2] else ""
            frame[2] += 1
            if frame[1]:
                key, item = following
                out.append(separator + encode_basestring_ascii(str(key)) + ":")
            else:
                item = following
                out.append(separator)
            break
        else:
            return "".join(out)


def dumps(value) -> bytes:
    """A JSON-ready value as TF Serving writes JSON (ASCII, compact).

    Floats are written as TF Serving writes them (see `_float_tokens`): `Float32Value`s and the
    values of `Float32List`s with float32's precision, other floats with double's; NaN and
    infinities as the `NaN`, `Infinity`, `-Infinity` tokens. Any nesting depth.
    """
    return _write(value).encode("ascii")


def json_value_text(value) -> str:
    """A JSON value as TF Serving quotes it in error messages (cut after 60 characters).

    A number that fits a float is written as one, as rapidjson's writer does for TF Serving.
    """
    if type(value) is float and math.isfinite(value) and abs(value) <= _FLOAT32_MAX:
        value = Float32Value(value)
    return _quote(_write(value, limit=_QUOTE_CHARS + 1))


def _quote(text: str) -> str:
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


def json_type_name(value) -> str:
    """The JSON type of a parsed value as TF Serving names it ("Number", "Array", "Null", ...)."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, dict):
        return "Object"
    return "Array"


def tf_type_name(dtype: tf.DType) -> str:
    """TensorFlow's DataTypeString, the dtype name TF Serving's messages use ("float", "half")."""
    return types_pb2.DataType.Name(dtype.as_datatype_enum)[len("DT_") :].lower()


def lossy_decimal_error(value, target: str) -> ServingError:
    """TF Serving's error for a JSON number `target` ("float", "double") cannot hold exactly."""
    return _invalid(
        f"Cannot convert JSON value: {json_value_text(value)} to {target} without loss of "
        "precision."
    )


# ----------------------------------------------------------------------------- JSON to arrays

_RAGGED_HINT = (
    " (the nested lists are not rectangular: every list at one depth must have the same length)"
)


def _type_error(value, dtype: tf.DType, hint: str = "") -> ServingError:
    return _invalid(
        f"JSON Value: {json_value_text(value)} Type: {json_type_name(value)} is not of expected "
        f"type: {tf_type_name(dtype)}{hint}"
    )


def _shape_text(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"


def _dense_shape(value) -> list[int]:
    """The shape TF Serving reads off a JSON value: the lengths along its first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) > MAX_JSON_RANK:
            raise _invalid(
                f"JSON Value: {json_value_text(value)} is nested more than {MAX_JSON_RANK} lists "
                f"deep; a tensor has at most {MAX_JSON_RANK} dimensions"
            )
        if not value:
            break
        value = value[0]
    return shape


def _flatten(value, shape: list[int]) -> list:
    """The leaves of `value` in row-major order, checking it is dense with `shape`."""
    items = [value]
    for level, size in enumerate(shape):
        below = []
        for item in items:
            if not isinstance(item, list):
                raise _invalid(
                    f"JSON Value: {json_value_text(item)} found at incorrect level: {level + 1} "
                    f"in the JSON DOM. Expected at level: {len(shape)}{_RAGGED_HINT}"
                )
            if len(item) != size:
                raise _invalid(
                    f"Encountered list at unexpected size: {len(item)} at level: {level} "
                    f"expected size: {size}{_RAGGED_HINT}"
                )
            below.extend(item)
        items = below
    if list in set(map(type, items)):
        raise _invalid(
            f"Encountered list at unexpected level: {len(shape)} expected < {len(shape)}"
            f"{_RAGGED_HINT}"
        )
    return items


def _json_dtype_supported(dtype: tf.DType) -> bool:
    if dtype == tf.string or dtype == tf.bool:
        return True
    return (dtype.is_floating or dtype.is_integer) and not dtype.is_quantized


def _first(leaves: list, predicate: Callable) -> int:
    return next(index for index, leaf in enumerate(leaves) if predicate(leaf))


def _strings(leaves: list, where: Callable[[int], str]) -> list[bytes]:
    if set(map(type, leaves)) <= {str}:
        return [json_string_bytes(leaf) for leaf in leaves]
    values = []
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, str):
            values.append(json_string_bytes(leaf))
        elif isinstance(leaf, dict):
            try:
                values.append(decode_b64_object(leaf))
            except ServingError as error:
                raise _invalid(where(index) + error.message) from None
        else:
            raise _invalid(where(index) + _type_error(leaf, tf.string).message)
    return values


def _integers(leaves: list, dtype: tf.DType, where: Callable[[int], str]) -> np.ndarray:
    if set(map(type, leaves)) - {int}:
        index = _first(leaves, lambda leaf: type(leaf) is not int)
        raise _invalid(where(index) + _type_error(leaves[index], dtype).message)
    try:
        values = np.array(leaves, dtype=np.int64)
    except OverflowError:  # Beyond int64: compared as Python ints.
        values = np.array(leaves, dtype=object)
    if values.size and (values.min() < dtype.min or values.max() > dtype.max):
        index = _first(leaves, lambda leaf: not dtype.min <= leaf <= dtype.max)
        hint = f" (out of range: {tf_type_name(dtype)} holds [{dtype.min}, {dtype.max}])"
        raise _invalid(where(index) + _type_error(leaves[index], dtype, hint).message)
    return values.astype(dtype.as_numpy_dtype)


def _floats(leaves: list, dtype: tf.DType, where: Callable[[int], str]) -> np.ndarray:
    kinds = set(map(type, leaves))
    if kinds - {int, float}:
        index = _first(leaves, lambda leaf: type(leaf) not in (int, float))
        raise _invalid(where(index) + _type_error(leaves[index], dtype).message)
    try:
        values = np.array(leaves, dtype=np.float64)
    except OverflowError:  # An integer beyond a double (rapidjson refuses it when parsing).
        index = _first(leaves, lambda leaf: abs(leaf) > sys.float_info.max)
        message = lossy_decimal_error(leaves[index], tf_type_name(dtype)).message
        raise _invalid(where(index) + message) from None
    info = np.finfo(dtype.as_numpy_dtype)
    # TF Serving's IsLosslessDecimal: a finite number must be within the dtype's range, and an
    # integer token that rapidjson holds as an int64 or uint64 must fit the mantissa.
    with np.errstate(invalid="ignore"):
        lossy = np.isfinite(values) & (np.abs(values) > float(info.max))
    if int in kinds:
        exact_integer = np.fromiter(
            (type(leaf) is int and -(2**63) <= leaf < 2**64 for leaf in leaves), bool, len(leaves)
        )
        max_int = 2 ** (info.nmant + 1) - 1
        lossy = np.where(exact_integer, np.abs(values) > max_int, lossy)
    if lossy.any():
        index = int(np.argmax(lossy))
        message = lossy_decimal_error(leaves[index], tf_type_name(dtype)).message
        raise _invalid(where(index) + message)
    return values.astype(dtype.as_numpy_dtype)


def _leaves_to_array(
    leaves: list, shape: list[int], dtype: tf.DType, where: Callable[[int], str]
) -> np.ndarray:
    """Converts the leaves of a dense JSON value to an array of `dtype` and `shape`.

    `where(index)` prefixes the message of an error about the leaf at `index`.
    """
    if not _json_dtype_supported(dtype):
        sample = json_value_text(leaves[0]) if leaves else "[]"
        raise ServingError(
            "UNIMPLEMENTED",
            f"Conversion of JSON Value: {sample} to type: {tf_type_name(dtype)} (send this dtype "
            "with the gRPC API)",
        )
    if dtype == tf.string:
        values = np.empty(len(leaves), dtype=object)
        values[:] = _strings(leaves, where)
    elif dtype == tf.bool:
        if set(map(type, leaves)) - {bool}:
            index = _first(leaves, lambda leaf: type(leaf) is not bool)
            raise _invalid(where(index) + _type_error(leaves[index], dtype).message)
        values = np.array(leaves, dtype=bool)
    elif dtype.is_integer:
        values = _integers(leaves, dtype, where)
    else:
        values = _floats(leaves, dtype, where)
    return values.reshape(shape)


def json_to_array(value, spec: tf.TensorSpec) -> np.ndarray:
    """Converts one input's JSON value (nested lists of numbers, bools or strings) to an array.

    As TF Serving's columnar format reads a value: the shape is read off the first elements, and
    every list at one depth must have that depth's length. The result has the signature's dtype;
    its shape is whatever the JSON holds (the graph checks it, as in TF Serving).

    Args:
        value: the parsed JSON value.
        spec: the signature's `tf.TensorSpec` for this input.

    Raises:
        ServingError: INVALID_ARGUMENT when a value does not fit the dtype or the lists are
            ragged; UNIMPLEMENTED for dtypes JSON cannot carry (complex, quantized, resource).
    """
    shape = _dense_shape(value)
    return _leaves_to_array(_flatten(value, shape), shape, spec.dtype, lambda index: "")


def _element_prefix(index: int, name: str | None) -> str:
    key = f" key: {name}" if name is not None else ""
    return f"Failed to process element: {index}{key} of 'instances' list. Error: "


def _ragged_instances_error(column: list, name: str | None) -> ServingError:
    """TF Serving's error for the first instance that is not dense or not shaped as the first."""
    first = None
    for index, element in enumerate(column):
        shape = _dense_shape(element)
        try:
            _flatten(element, shape)
        except ServingError as error:
            return _invalid(_element_prefix(index, name) + error.message)
        if first is None:
            first = shape
        elif math.prod(shape) != math.prod(first):
            return _invalid(
                _element_prefix(index, name)
                + f"Expecting tensor size: {math.prod(first)} but got: {math.prod(shape)}"
                + _RAGGED_HINT
            )
        elif shape != first:
            return _invalid(
                _element_prefix(index, name)
                + f"Expecting shape {_shape_text(first)} but got: {_shape_text(shape)}"
                + _RAGGED_HINT
            )
    return _invalid(f"'instances' could not be read as one tensor{_RAGGED_HINT}")


def _instances_column(column: list, spec: tf.TensorSpec, name: str | None) -> np.ndarray:
    """One input's values of every instance, batched (dim 0 = instance)."""
    shape = _dense_shape(column)
    try:
        leaves = _flatten(column, shape)
    except ServingError:
        raise _ragged_instances_error(column, name) from None
    per_instance = math.prod(shape[1:])
    return _leaves_to_array(
        leaves, shape, spec.dtype, lambda index: _element_prefix(index // per_instance, name)
    )


def check_input_names(given: Iterable[str], specs: Mapping[str, tf.TensorSpec]) -> None:
    """Raises INVALID_ARGUMENT unless the request names exactly the signature's inputs."""
    given, expected = set(given), set(specs)
    if given == expected:
        return
    fmt = lambda names: "{" + ",".join(sorted(names)) + "}"  # noqa: E731
    raise _invalid(
        f"input size does not match signature: {len(given)}!={len(expected)} "
        f"len({fmt(given)}) != len({fmt(expected)}). Sent extra: {fmt(given - expected)}. "
        f"Missing but required: {fmt(expected - given)}."
    )


def _is_named_row(value) -> bool:
    return isinstance(value, dict) and not is_b64_object(value)


def _named_columns(instances: list, specs: Mapping[str, tf.TensorSpec]) -> dict[str, list]:
    names = ",".join(sorted(specs))
    for index, row in enumerate(instances):
        if not _is_named_row(row):
            raise _invalid(f"Expecting object but got list at item {index} of input list")
        for key in row:
            if key not in specs:
                raise _invalid(
                    _element_prefix(index, key) + f"JSON object: does not have named input: {key}"
                )
        if len(row) != len(specs):
            raise _invalid(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{json_value_text(row)} keys must be equal to: {names}"
            )
    return {name: [row[name] for row in instances] for name in specs}


def instances_to_arrays(instances, specs: Mapping[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """Row format: `"instances"` to one batched array per input (dim 0 = number of rows).

    Raises:
        ServingError: INVALID_ARGUMENT with TF Serving's messages: not a list, empty, plain
            values for several inputs, a mix of objects and values, instances whose shapes
            differ ("Expecting tensor size" / "Expecting shape"), values not of the dtype;
            and (beyond TF Serving, which would fail later) inputs that are scalars in the
            signature. Shapes are otherwise the graph's business, as in TF Serving.
    """
    if not isinstance(instances, list):
        raise _invalid("Excepting 'instances' to be an list/array")
    if not instances:
        raise _invalid("No values in 'instances' array")
    if _is_named_row(instances[0]):
        columns = _named_columns(instances, specs)
        named = True
    else:
        if len(specs) != 1:
            raise _invalid(
                "instances is a plain list, but expecting list of objects as multiple input "
                f"tensors required as per tensorinfo_map (inputs: {', '.join(sorted(specs))})"
            )
        for index, row in enumerate(instances):
            if _is_named_row(row):
                raise _invalid(f"Expecting value/list but got object at item {index} of input list")
        columns = {next(iter(specs)): instances}
        named = False
    scalars = sorted(name for name, spec in specs.items() if spec.shape.rank == 0)
    if scalars:
        raise _invalid(
            f"input {', '.join(repr(s) for s in scalars)} is a scalar in the signature; row "
            "format ('instances') gives every input a batch dimension, so send scalar inputs "
            "in columnar format ('inputs')"
        )
    return {
        name: _instances_column(column, specs[name], name if named else None)
        for name, column in columns.items()
    }


def inputs_to_arrays(inputs, specs: Mapping[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """Columnar format: `"inputs"` (object keyed by input name, or the sole input's value)."""
    if _is_named_row(inputs):
        check_input_names(inputs.keys(), specs)
        return {name: json_to_array(value, specs[name]) for name, value in inputs.items()}
    if len(specs) != 1:
        raise _invalid(
            "inputs is a plain value/list, but expecting an object as multiple input tensors "
            f"required as per tensorinfo_map (inputs: {', '.join(sorted(specs))})"
        )
    name = next(iter(specs))
    return {name: json_to_array(inputs, specs[name])}


def dtype_of(array: np.ndarray) -> tf.DType | None:
    """The dtype an array travels as (object, bytes and str arrays are strings); None if none."""
    if array.dtype.kind in "OSU":
        return tf.string
    try:
        return tf.as_dtype(array.dtype)
    except TypeError:
        return None


# ----------------------------------------------------------------------------- arrays to JSON


def _bytes_to_json(value: bytes, as_bytes: bool):
    if not as_bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass  # TF Serving would write invalid JSON here; base64 keeps it valid.
    return {"b64": base64.b64encode(value).decode("ascii")}


def _float32_lists(array: np.ndarray):
    """A float32 array as nested lists whose innermost lists are `Float32List`s."""
    if array.ndim == 0:
        return Float32Value(array.item())
    if array.size == 0:
        return array.tolist()  # Lists of empty lists: no value to mark.
    nested = list(map(Float32List, array.reshape(-1, array.shape[-1]).tolist()))
    for size in reversed(array.shape[1:-1]):
        nested = [nested[start : start + size] for start in range(0, len(nested), size)]
    return nested if array.ndim > 1 else nested[0]


def array_to_json(array: np.ndarray, *, as_bytes: bool = False):
    """An output array as nested Python lists ready for `dumps`.

    Float32, float16 and bfloat16 values are floats in `Float32List`s (`Float32Value` for a
    scalar), so `dumps` writes them with float32's precision as TF Serving does (a float32 0.1
    is 0.1, not 0.10000000149011612); float64 values are plain floats. Strings are decoded as
    UTF-8, or written as `{"b64": ...}` when `as_bytes` (TF Serving's rule: output names ending
    in "_bytes") or when they are not valid UTF-8.

    Raises:
        ServingError: INVALID_ARGUMENT for dtypes JSON cannot carry (complex, quantized).
    """
    array = np.asarray(array)
    dtype = dtype_of(array)
    if dtype == tf.string:
        out = np.empty(array.shape, dtype=object)
        for index, item in enumerate(array.flat):
            item = item if isinstance(item, bytes) else str(item).encode("utf-8")
            out.flat[index] = _bytes_to_json(item, as_bytes)
        return out.tolist()
    if dtype is not None and dtype.is_floating:
        if array.dtype == np.float64:
            return array.tolist()
        return _float32_lists(array.astype(np.float32))
    if dtype is not None and (dtype.is_integer or dtype == tf.bool) and not dtype.is_quantized:
        return array.tolist()
    name = tf_type_name(dtype) if dtype is not None else str(array.dtype)
    raise _invalid(f"Failed to write JSON value for tensor type: {name}")


def _rows(column) -> list:
    """The per-row values of an output's JSON (a 1-D float32 output's rows stay float32)."""
    if isinstance(column, Float32List):
        return list(map(Float32Value, column))
    return column


def outputs_to_predictions(outputs: Mapping[str, np.ndarray]) -> list:
    """Row-format response body value: one element per row, objects when several outputs.

    Every output must be batch-major (rank >= 1, same dim 0), else INVALID_ARGUMENT.
    """
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    batch = None
    for name in sorted(outputs):
        array = np.asarray(outputs[name])
        if array.ndim == 0:
            raise _invalid(
                f"Tensor name: {name} has no shape information: a scalar output cannot be "
                "returned in row format ('instances'); use columnar format ('inputs')"
            )
        if batch is not None and array.shape[0] != batch:
            raise _invalid(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: "
                f"{batch}. Row format ('instances') needs every output batch-major; use columnar "
                "format ('inputs')"
            )
        batch = array.shape[0]
    columns = {
        name: array_to_json(array, as_bytes=name.endswith(BYTES_SUFFIX))
        for name, array in sorted(outputs.items())
    }
    if len(columns) == 1:
        return next(iter(columns.values()))
    columns = {name: _rows(column) for name, column in columns.items()}
    return [{name: column[row] for name, column in columns.items()} for row in range(batch)]


def outputs_to_columns(outputs: Mapping[str, np.ndarray]):
    """Columnar response body value: the bare value for one output, else an object."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    columns = {
        name: array_to_json(array, as_bytes=name.endswith(BYTES_SUFFIX))
        for name, array in sorted(outputs.items())
    }
    if len(columns) == 1:
        return next(iter(columns.values()))
    return columns


# ----------------------------------------------------------------------------- gRPC protos

# The repeated field each dtype's values travel in (when not in `tensor_content`).
_VALUE_FIELDS = {
    tf.float16: "half_val",
    tf.bfloat16: "half_val",
    tf.float32: "float_val",
    tf.float64: "double_val",
    tf.int8: "int_val",
    tf.int16: "int_val",
    tf.int32: "int_val",
    tf.uint8: "int_val",
    tf.uint16: "int_val",
    tf.qint8: "int_val",
    tf.quint8: "int_val",
    tf.qint16: "int_val",
    tf.quint16: "int_val",
    tf.qint32: "int_val",
    tf.int64: "int64_val",
    tf.uint32: "uint32_val",
    tf.uint64: "uint64_val",
    tf.complex64: "scomplex_val",
    tf.complex128: "dcomplex_val",
    tf.bool: "bool_val",
    tf.string: "string_val",
}

# The plain integer type NumPy stores each quantized dtype's values as.
_QUANTIZED_BASE = {
    tf.qint8: np.int8,
    tf.quint8: np.uint8,
    tf.qint16: np.int16,
    tf.quint16: np.uint16,
    tf.qint32: np.int32,
}


def _field_values(array: np.ndarray, dtype: tf.DType) -> list:
    """The values of `array` as its dtype's repeated field holds them, in row-major order."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if dtype in (tf.float16, tf.bfloat16):
        return flat.view(np.uint16).tolist()  # half_val holds the bit patterns, as TF writes them.
    if dtype.is_complex:
        return flat.view(flat.real.dtype).tolist()  # Real and imaginary parts interleaved.
    if dtype in _QUANTIZED_BASE:
        return flat.view(_QUANTIZED_BASE[dtype]).tolist()
    return flat.tolist()


def array_to_tensor_proto(
    array: np.ndarray, *, tensor_content: bool = False
) -> tensor_pb2.TensorProto:
    """NumPy array (object arrays of bytes for strings) to a `TensorProto`, as TF Serving answers.

    Args:
        array: the tensor.
        tensor_content: put the values in `tensor_content` (TF Serving's
            `--enable_serialization_as_tensor_content`) instead of the dtype's typed field
            (`float_val`, `int_val`, `half_val` with half and bfloat16 bit patterns, ...).
            Strings always use `string_val`.

    Raises:
        ServingError: INVALID_ARGUMENT for an array no TensorProto dtype describes.
    """
    array = np.asarray(array)
    dtype = dtype_of(array)
    if dtype not in _VALUE_FIELDS:
        raise _invalid(f"Failed to write tensor of NumPy type {array.dtype} to a TensorProto")
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    proto.tensor_shape.SetInParent()  # Set for scalars too, as TensorFlow writes shapes.
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if dtype == tf.string:
        proto.string_val.extend(
            item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.flat
        )
    elif tensor_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    else:
        getattr(proto, _VALUE_FIELDS[dtype]).extend(_field_values(array, dtype))
    return proto


def _proto_dtype(proto: tensor_pb2.TensorProto, name: str) -> tf.DType:
    try:
        dtype = tf.as_dtype(proto.dtype)
    except TypeError:
        dtype = None
    if dtype not in _VALUE_FIELDS:
        raise _invalid(
            f"tensor parsing error: {name}: dtype {proto.dtype} "
            f"({getattr(dtype, 'name', 'unknown')}) cannot be sent in a request"
        )
    return dtype


def check_tensor_proto(
    proto: tensor_pb2.TensorProto, name: str, max_bytes: int | None = None
) -> None:
    """Raises INVALID_ARGUMENT unless `proto` describes a tensor that can be built safely.

    Checks the dtype, the shape (known rank, no negative dimension), that its values sit in the
    dtype's field and are no more than the shape holds, and, with `max_bytes`, that the shape
    declares at most that many bytes (strings count 8 bytes an element).
    """
    dtype = _proto_dtype(proto, name)
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise _invalid(f"tensor parsing error: {name}: the shape has an unknown rank")
    dims = [dim.size for dim in shape.dim]
    if len(dims) > MAX_PROTO_RANK:
        raise _invalid(
            f"tensor parsing error: {name}: rank {len(dims)} is over the limit of {MAX_PROTO_RANK}"
        )
    if any(size < 0 for size in dims):
        raise _invalid(f"tensor parsing error: {name}: negative dimension in shape {dims}")
    elements = math.prod(dims)
    itemsize = 8 if dtype == tf.string else dtype.size
    if max_bytes is not None and elements * itemsize > max_bytes:
        raise _invalid(
            f"tensor parsing error: {name}: shape {dims} of {dtype.name} declares "
            f"{elements * itemsize} bytes, more than the limit of {max_bytes} bytes on a request "
            "(--max_body_bytes)"
        )
    field = _VALUE_FIELDS[dtype]
    for descriptor, _ in proto.ListFields():
        if descriptor.name.endswith("_val") and descriptor.name != field:
            raise _invalid(
                f"tensor parsing error: {name}: dtype {dtype.name} carries its values in "
                f"{field}, but the proto sets {descriptor.name}"
            )
    if proto.tensor_content:
        if dtype == tf.string:
            raise _invalid(f"tensor parsing error: {name}: string tensors cannot use tensor_content")
        if len(proto.tensor_content) != elements * itemsize:
            raise _invalid(
                f"tensor parsing error: {name}: tensor_content has {len(proto.tensor_content)} "
                f"bytes, but shape {dims} of {dtype.name} needs {elements * itemsize}"
            )
        return
    per_element = 2 if dtype.is_complex else 1
    count = len(getattr(proto, field))
    if count > elements * per_element:
        raise _invalid(
            f"tensor parsing error: {name}: {count} values in {field} for shape {dims} "
            f"({elements} elements)"
        )


def tensor_proto_to_array(
    proto: tensor_pb2.TensorProto, name: str, *, max_bytes: int | None = None
) -> np.ndarray:
    """`TensorProto` to a NumPy array; INVALID_ARGUMENT when the proto is malformed.

    Fewer values than the shape holds repeat the last one (zeros when none), as TensorFlow
    reads them; `max_bytes` bounds what that may expand to (see `check_tensor_proto`).
    """
    check_tensor_proto(proto, name, max_bytes)
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # make_ndarray raises TypeError/ValueError/KeyError variously.
        raise _invalid(f"tensor parsing error: {name}: {error}") from None


def proto_to_json(message) -> dict:
    """A proto as TF Serving's REST API prints it.

    Field names as in the .proto and default values included: a status of OK
    is `{"error_code": "OK", "error_message": ""}`, not `{}`.
    """
    from google.protobuf import json_format

    try:
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26 names the option differently.
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, including_default_value_fields=True
        )
