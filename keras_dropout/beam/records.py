"""Examples in files: TFRecord (tf.train.Example), Parquet and CSV records as model inputs.

A record is a dict `{column: value}` (an Example's features hold lists; Parquet cells are
scalars or lists; CSV cells are strings). `FeaturePlan` maps records to the inputs of a model:
one column per input when the columns are named after the inputs, else the listed (or all
non-key) columns concatenated into a single input, reshaped row-major to its shape.
"""

import csv
import io
import math
import os

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
    matches = FileSystems.match([pattern])[0].metadata_list
    paths = sorted(metadata.path for metadata in matches)
    if not paths:
        raise FileNotFoundError(f"No input file matches {pattern!r}.")
    return paths


def read_file(path, fmt):
    """Yields the records of one file, in file order."""
    if fmt == "tfrecord":
        from apache_beam.io.tfrecordio import _TFRecordUtil

        with FileSystems.open(path) as handle:
            while (serialized := _TFRecordUtil.read_record(handle)) is not None:
                yield parse_example(serialized)
    elif fmt == "parquet":
        import pyarrow.parquet

        with FileSystems.open(path) as handle:
            for batch in pyarrow.parquet.ParquetFile(handle).iter_batches(batch_size=4096):
                yield from batch.to_pylist()
    else:
        with FileSystems.open(path) as handle:
            rows = csv.reader(io.TextIOWrapper(handle, encoding="utf-8", newline=""))
            header = next(rows, None)
            for row in rows:
                yield csv_record(header, row)


def read_positioned(indexed_path, fmt):
    """Yields `(position key, record)` for the records of the file `(index, path)`."""
    file_index, path = indexed_path
    for position, record in enumerate(read_file(path, fmt)):
        yield file_index * FILE_KEY_STRIDE + position, record


def csv_header(path):
    with FileSystems.open(path) as handle:
        return next(csv.reader(io.TextIOWrapper(handle, encoding="utf-8", newline="")), None) or []


def csv_record(header, row):
    if isinstance(row, str):
        row = next(csv.reader([row]))
    if len(row) != len(header):
        raise ValueError(f"CSV row has {len(row)} fields, the header {len(header)}: {row[:8]!r}")
    return dict(zip(header, row))


def parse_example(serialized):
    """A serialized tf.train.Example as `{feature name: list of values}`."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    record = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        record[name] = list(getattr(feature, kind).value) if kind else []
    return record


def record_key(record, key_column):
    """Removes and returns the key column's value: an int when it reads as one, else a str."""
    if key_column not in record:
        raise ValueError(f"Record has no key column {key_column!r}; its columns: {sorted(record)}.")
    value = record.pop(key_column)
    if isinstance(value, list):  # tf.train.Example features are lists
        if len(value) != 1:
            raise ValueError(f"Key column {key_column!r} holds {len(value)} values, expected one.")
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    if isinstance(value, float) or value is None:
        raise ValueError(f"Key column {key_column!r} holds {value!r}: keys are ints or strings.")
    return value


class FeaturePlan:
    """Which columns feed which model input, and how they are shaped.

    Args:
        inputs: `[(name, shape without batch or None, dtype name)]`, one per
            model input.
        columns: the column names of each input, in order.
        as_dict: features are passed as a dict keyed by input name.
    """

    def __init__(self, inputs, columns, as_dict):
        self.inputs = inputs
        self.columns = columns
        self.as_dict = as_dict

    @classmethod
    def for_model(cls, model, record_columns, *, feature_columns=None, ordered=True):
        """Plans the inputs of `model` from a record's columns.

        `ordered` says whether the record's columns have an order (Parquet and
        CSV do; tf.train.Example features are a map, so taking "all columns"
        from one needs `feature_columns`).
        """
        inputs = model_inputs(model)
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
            return cls(inputs, [list(feature_columns)], as_dict=False)
        if all(name in record_columns for name in names) and (len(inputs) > 1 or names[0] is not None):
            return cls(inputs, [[name] for name in names], as_dict=len(inputs) > 1)
        if len(inputs) == 1:
            if not ordered and len(record_columns) > 1:
                raise ValueError(
                    f"The records' features {sorted(record_columns)} have no order and none is named after "
                    f"the model's input {names[0]!r}: pass --feature_columns to say which feed it, in order."
                )
            return cls(inputs, [list(record_columns)], as_dict=False)
        raise ValueError(
            f"Model '{model.name}' has inputs {names}; the input columns {record_columns} do not include "
            "them all. Name one column (or tf.train.Example feature) after each input."
        )

    def __call__(self, record):
        arrays = [self._input(spec, columns, record) for spec, columns in zip(self.inputs, self.columns)]
        if self.as_dict:
            return {name: array for (name, _, _), array in zip(self.inputs, arrays)}
        return arrays[0]

    def _input(self, spec, columns, record):
        name, shape, dtype = spec
        if dtype == "string":
            values = [_text(value) for column in columns for value in _cells(record, column)]
            array = np.array(values, dtype=object)
        else:
            array = _numbers(record, columns)
            if np.isnan(array).any():
                missing = [c for c in columns if any(_is_missing(v) for v in _cells(record, c))]
                raise ValueError(f"Missing or NaN value in column(s) {missing}: impute or drop the record first.")
            if np.dtype(dtype).kind in "iub":
                if not np.array_equal(array, np.round(array)):
                    raise ValueError(f"Input {name!r} is {dtype}, but columns {columns} hold non-integer values.")
            array = array.astype(dtype)
        if shape is None:
            return array
        if all(dim is not None for dim in shape):
            if array.size != math.prod(shape):
                raise ValueError(
                    f"Input {name!r} needs {math.prod(shape)} values (shape {tuple(shape)}); "
                    f"columns {columns} hold {array.size}."
                )
            return array.reshape(shape)
        known = math.prod(dim for dim in shape if dim is not None)
        if sum(dim is None for dim in shape) > 1 or array.size % known:
            raise ValueError(
                f"Input {name!r} has shape {tuple(shape)}; columns {columns} hold {array.size} values, "
                "which do not fill it."
            )
        return array.reshape([-1 if dim is None else dim for dim in shape])


def model_inputs(model):
    """`[(name, shape without batch, dtype)]` of a model's inputs (one unknown input for
    a subclassed model that has none recorded)."""
    from keras_dropout import _keras_internals as internals

    structure = internals.input_structure(model)
    tensors = getattr(model, "inputs", None) or []
    if isinstance(structure, dict):
        return [(key, tuple(tensor.shape[1:]), str(tensor.dtype)) for key, tensor in structure.items()]
    if tensors:
        return [(tensor.name, tuple(tensor.shape[1:]), str(tensor.dtype)) for tensor in tensors]
    import keras

    return [(None, None, keras.config.floatx())]


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
        # Slow, value by value, to name the column and value at fault.
        return np.array(
            [_number(value, column) for column in columns for value in _cells(record, column)], dtype=np.float64
        )


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
