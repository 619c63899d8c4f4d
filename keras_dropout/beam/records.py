"""Examples in files: TFRecord (tf.train.Example), Parquet and CSV records as model inputs.

Files are read as *raw* records (serialized Examples, Parquet row dicts, CSV rows); a
`RecordDecoder` turns one into a dict `{column: value}` (an Example's features hold lists,
Parquet cells are scalars or lists, CSV cells are strings), and `FeaturePlan` maps that dict to
the inputs of a model: one column per input when the columns are named after the inputs, else
the listed (or all non-key) columns concatenated into a single input, reshaped row-major to its
shape. Decoding happens where a bad record can be set aside with its reason, not in the reader.
"""

import csv
import math
import os
import re

import numpy as np
from apache_beam.io.filesystems import FileSystems

FORMATS = ("tfrecord", "parquet", "csv")
_EXTENSIONS = {
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
    ".tfr": "tfrecord",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}
# Without a key column an example's key is its position: file number (in sorted path order)
# times this stride, plus its index in the file; a single file's keys are its row numbers.
FILE_KEY_STRIDE = 1 << 40
_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")


def input_format(pattern, given=None):
    """The format of the files `pattern` names: `given`, or read off the extension."""
    if given is not None:
        if given not in FORMATS:
            raise ValueError(f"Unknown input format {given!r}: expected one of {list(FORMATS)}.")
        return given
    stem = pattern[:-3] if pattern.endswith(".gz") else pattern
    extension = os.path.splitext(stem)[1].lower()
    if extension not in _EXTENSIONS:
        raise ValueError(
            f"Cannot tell the format of {pattern!r} from its extension: pass --input_format "
            f"({', '.join(FORMATS)})."
        )
    return _EXTENSIONS[extension]


def match_files(pattern):
    """The files a pattern (local or any Beam filesystem) matches, sorted; at least one."""
    if os.path.isdir(pattern):
        raise ValueError(f"{pattern!r} is a directory: pass a file or a glob such as '{pattern.rstrip('/')}/*'.")
    matches = FileSystems.match([pattern])[0].metadata_list
    paths = sorted(metadata.path for metadata in matches if not os.path.isdir(metadata.path))
    if not paths:
        raise FileNotFoundError(f"No input file matches {pattern!r}.")
    return paths


def read_file(path, fmt):
    """Yields the raw records of one file, in file order (a CSV file's header excluded)."""
    if fmt == "tfrecord":
        # Beam's own TFRecord framing (private; apache-beam 2.77), which reads from any of
        # Beam's filesystems, where tf.data reads only TensorFlow's.
        from apache_beam.io.tfrecordio import _TFRecordUtil

        with FileSystems.open(path) as handle:
            while (serialized := _TFRecordUtil.read_record(handle)) is not None:
                yield serialized
    elif fmt == "parquet":
        import pyarrow.parquet

        with FileSystems.open(path) as handle:
            for batch in pyarrow.parquet.ParquetFile(handle).iter_batches(batch_size=4096):
                yield from batch.to_pylist()
    else:
        rows = _csv_rows(path)
        next(rows, None)  # the header
        yield from rows


def read_positioned(indexed_path, fmt):
    """Yields `(position key, raw record)` for the records of the file `(index, path)`."""
    file_index, path = indexed_path
    for position, raw in enumerate(read_file(path, fmt)):
        yield file_index * FILE_KEY_STRIDE + position, raw


def csv_header(path):
    """The column names in the first row of a CSV file (a UTF-8 byte-order mark dropped)."""
    return next(_csv_rows(path), None) or []


def _csv_rows(path):
    # Lines decoded one by one: Beam's compressed files (.csv.gz) are binary streams that
    # io.TextIOWrapper cannot wrap. Blank lines are no records.
    with FileSystems.open(path) as handle:
        lines = (line.decode("utf-8-sig") for line in iter(handle.readline, b""))
        for row in csv.reader(lines):
            if row:
                yield row


class RecordDecoder:
    """Turns raw records of one format into `{column: value}` dicts.

    Args:
        fmt: "tfrecord", "parquet" or "csv".
        header: the CSV column names (CSV only).

    Returns:
        Called on a raw record: its dict, or None for a record that holds
        nothing (a blank CSV line). Raises `ValueError` for a malformed one.
    """

    def __init__(self, fmt, header=None):
        self.fmt = fmt
        self.header = header

    def __call__(self, raw):
        if self.fmt == "tfrecord":
            return parse_example(raw)
        if self.fmt == "parquet":
            return dict(raw)
        if isinstance(raw, str):  # a line from Beam's ReadFromText
            if not raw.strip():
                return None
            raw = next(csv.reader([raw]))
        if len(raw) != len(self.header):
            raise ValueError(f"CSV row has {len(raw)} fields, the header {len(self.header)}: {raw[:8]!r}")
        return dict(zip(self.header, raw))


def parse_example(serialized):
    """A serialized tf.train.Example as `{feature name: list of values}`."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(serialized)
    except DecodeError as error:
        raise ValueError(f"Not a serialized tf.train.Example: {error}") from None
    record = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        record[name] = list(getattr(feature, kind).value) if kind else []
    return record


def key_kind(fmt, value):
    """How keys of a column are read: "native" (typed formats), or for CSV "int" when its
    first key is a canonical integer, else "str"."""
    if fmt != "csv" or not isinstance(value, str):
        return "native"
    return "int" if _CANONICAL_INT.fullmatch(value) and -(2**63) <= int(value) < 2**63 else "str"


def record_key(record, key_column, kind="native"):
    """Removes and returns a record's key: an int or a str.

    Typed columns keep their type (bytes are decoded); CSV keys of an "int"
    column must be canonical integers ("007" is not 7), of a "str" column stay
    text.
    """
    if key_column not in record:
        raise ValueError(f"Record has no key column {key_column!r}; its columns: {sorted(record)}.")
    value = record.pop(key_column)
    if isinstance(value, list):  # tf.train.Example features are lists
        if len(value) != 1:
            raise ValueError(f"Key column {key_column!r} holds {len(value)} values, expected one.")
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if kind == "int":
        if not _CANONICAL_INT.fullmatch(value) or not -(2**63) <= int(value) < 2**63:
            raise ValueError(
                f"Key {value!r} is not a 64-bit integer, though the key column {key_column!r} holds integers."
            )
        return int(value)
    if isinstance(value, (bool, float)) or value is None or not isinstance(value, (int, str, np.integer)):
        raise ValueError(f"Key column {key_column!r} holds {value!r}: keys are integers or strings.")
    return int(value) if isinstance(value, np.integer) else value


class FeaturePlan:
    """Which columns feed which model input, and how they are shaped.

    Args:
        inputs: `[(name, shape without batch, dtype name)]`, one per model
            input; every dimension known (see `for_model`).
        columns: the column names of each input, in order.
        as_dict: features are passed as a dict keyed by input name.

    Returns:
        Called on a record dict: the model's features for it (an array, or a
        dict of arrays keyed by input name). Raises `ValueError`, naming the
        columns, for a record that cannot feed the model.
    """

    def __init__(self, inputs, columns, as_dict):
        self.inputs = inputs
        self.columns = columns
        self.as_dict = as_dict

    @classmethod
    def for_model(cls, model, record_columns, first_record, *, feature_columns=None, ordered=True):
        """Plans the inputs of `model` from the columns of the first record.

        `ordered` says whether the record's columns have an order (Parquet and
        CSV do; tf.train.Example features are a map, so taking "all columns"
        from one needs `feature_columns`). A dimension the model leaves open
        (None) is fixed by the first record: examples are batched together,
        so all must have its length.
        """
        inputs, structured = model_inputs(model)
        names = [name for name, _, _ in inputs]
        if feature_columns:
            if len(inputs) != 1:
                raise ValueError(
                    f"--feature_columns feeds one input, but model '{model.name}' has inputs {names}: "
                    "name the columns after the inputs instead."
                )
            missing = [column for column in feature_columns if column not in record_columns]
            if missing:
                raise ValueError(f"Feature columns {missing} are not in the input; its columns: {record_columns}.")
            columns = [list(feature_columns)]
        elif all(name in record_columns for name in names) and (len(inputs) > 1 or names[0] is not None):
            columns = [[name] for name in names]
        elif len(inputs) == 1:
            if not ordered and len(record_columns) > 1:
                raise ValueError(
                    f"The records' features {sorted(record_columns)} have no order and none is named after "
                    f"the model's input {names[0]!r}: pass --feature_columns to say which feed it, in order."
                )
            columns = [list(record_columns)]
        else:
            raise ValueError(
                f"Model '{model.name}' has inputs {names}; the input columns {record_columns} do not include "
                "them all. Name one column (or tf.train.Example feature) after each input."
            )
        plan = cls(inputs, columns, as_dict=structured or len(inputs) > 1)
        first = [plan._values(spec, cols, first_record) for spec, cols in zip(inputs, columns)]
        plan.inputs = [(name, _fixed_shape(name, shape, array.size), dtype) for (name, shape, dtype), array in zip(inputs, first)]
        return plan

    def __call__(self, record):
        arrays = [self._input(spec, columns, record) for spec, columns in zip(self.inputs, self.columns)]
        if self.as_dict:
            return {name: array for (name, _, _), array in zip(self.inputs, arrays)}
        return arrays[0]

    def _input(self, spec, columns, record):
        name, shape, _ = spec
        array = self._values(spec, columns, record)
        if array.size != math.prod(shape):
            raise ValueError(
                f"Input {name!r} takes {math.prod(shape)} values (shape {tuple(shape)}); columns {columns} "
                f"hold {array.size}. Examples are batched together: pad variable-length values to one length."
            )
        return array.reshape(shape)

    def _values(self, spec, columns, record):
        name, _, dtype = spec
        if dtype == "string":
            values = [value for column in columns for value in _cells(record, column)]
            if any(value is None for value in values):
                raise ValueError(f"Missing value in column(s) {columns}: impute or drop the record first.")
            return np.array([_text(value) for value in values], dtype=object)
        kind = np.dtype(dtype).kind
        if kind in "iub":
            return _integers(record, columns, np.dtype(dtype))
        array = _numbers(record, columns)
        if np.isnan(array).any():
            missing = [c for c in columns if any(_is_missing(v) for v in _cells(record, c))]
            raise ValueError(f"Missing or NaN value in column(s) {missing}: impute or drop the record first.")
        return array.astype(dtype)


def model_inputs(model):
    """`([(name, shape without batch, dtype)], takes a dict)` of a model's inputs (one
    unknown input for a subclassed model that has none recorded)."""
    from keras_dropout import _keras_internals as internals

    structure = internals.input_structure(model)
    tensors = getattr(model, "inputs", None) or []
    if isinstance(structure, dict):
        specs = [(key, tuple(tensor.shape[1:]), _numpy_dtype(tensor.dtype)) for key, tensor in structure.items()]
        return specs, True
    if tensors:
        return [(tensor.name, tuple(tensor.shape[1:]), _numpy_dtype(tensor.dtype)) for tensor in tensors], False
    import keras

    return [(None, (None,), keras.config.floatx())], False


def _numpy_dtype(dtype):
    name = str(dtype)
    if name == "string":
        return name
    try:
        np.dtype(name)
    except TypeError:  # bfloat16 and the like: fed as float32, Keras casts on call
        return "float32"
    return name


def _fixed_shape(name, shape, size):
    open_dims = sum(dim is None for dim in shape)
    known = math.prod(dim for dim in shape if dim is not None)
    if open_dims == 0:
        if size != known:
            raise ValueError(f"Input {name!r} takes {known} values (shape {tuple(shape)}); the first record holds {size}.")
        return tuple(shape)
    if open_dims > 1 or size % known:
        raise ValueError(
            f"Input {name!r} has shape {tuple(shape)}; the first record holds {size} values, which cannot fill it."
        )
    return tuple(size // known if dim is None else dim for dim in shape)


def _cells(record, column):
    if column not in record:
        raise ValueError(f"Record has no column {column!r}; its columns: {sorted(record)}.")
    value = record[column]
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(np.ravel(np.asarray(value, dtype=object)))
    return [value]


def _numbers(record, columns):
    """The columns' values as one float64 vector (None and NaN as NaN)."""
    try:  # one NumPy conversion per column: the common case, numbers or numeric strings
        return np.concatenate([np.asarray(record[column], dtype=np.float64).ravel() for column in columns])
    except (KeyError, TypeError, ValueError):
        # Value by value, to name the column and value at fault.
        return np.array(
            [_number(value, column) for column in columns for value in _cells(record, column)], dtype=np.float64
        )


def _integers(record, columns, dtype):
    """The columns' values as integers of `dtype`, exactly (no rounding, no wrapping)."""
    try:  # exact for int64 values beyond 2**53, which a float would round
        values = np.concatenate([_exact_integers(record[column]) for column in columns])
    except (KeyError, TypeError, ValueError, OverflowError):
        floats = _numbers(record, columns)
        if np.isnan(floats).any():
            raise ValueError(f"Missing value in column(s) {columns}: impute or drop the record first.") from None
        if not np.array_equal(floats, np.round(floats)) or np.abs(floats).max(initial=0) > 2**53:
            raise ValueError(f"Columns {columns} hold non-integer values; the input is {dtype}.") from None
        values = floats.astype(np.int64)
    low, high = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    if values.size and (values.min() < low or values.max() > high):
        raise ValueError(f"Columns {columns} hold values outside [{low}, {high}], the range of the input's {dtype}.")
    return values.astype(dtype)


def _exact_integers(value):
    array = np.asarray(value)
    if array.dtype.kind in "iuUS":  # integers, or text such as "3" ("3.0" raises ValueError)
        if array.dtype.kind == "u" and array.size and array.max() >= 2**63:
            raise OverflowError
        return array.astype(np.int64).ravel()
    raise TypeError  # floats, None, mixed: checked value by value


def _is_missing(value):
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _number(value, column):
    if _is_missing(value):
        return math.nan
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Column {column!r} holds {value!r}, which is not a number.") from None


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
