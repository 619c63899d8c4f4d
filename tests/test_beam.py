"""Batch scoring on Apache Beam: `keras_dropout.beam.MCModelHandler` and `keras-dropout score`.

Specification: DESIGN.md sections 3 (`row_ids`) and 4b. Real pipelines on Beam's DirectRunner (in
process, and with two worker processes), real TFRecord / Parquet / CSV files; the reference is
`kd.predict_mc` with the keys as `row_ids` and the same seed. Masks depend only on (seed, key,
sample), so results agree whatever batches Beam forms; the tolerance allows float rounding
across batch sizes (matmul blocking), far below what another mask changes.
"""

import glob
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")

import keras_dropout as kd  # noqa: E402
from apache_beam.ml.inference.base import RunInference  # noqa: E402
from keras_dropout.beam import MCModelHandler  # noqa: E402
from keras_dropout.beam import score  # noqa: E402
from keras_dropout.beam.handler import row_id  # noqa: E402

pytestmark = pytest.mark.tf_only

ROWS = 3000
SEED = 11
RTOL, ATOL = 1e-5, 1e-6
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
CLASSIFIER_STATISTICS = ("mean", "variance", "predictive_entropy", "mutual_information")


def _classifier():
    inputs = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    hidden = keras.layers.Dropout(0.3)(hidden)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    return keras.Model(inputs, outputs)


def _image_regressor():
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            kd.layers.MCSpatialDropout2D(0.2),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    return model


def _two_input_regressor():
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    hidden = keras.layers.Concatenate()([keras.layers.Dense(8)(a), b])
    hidden = kd.layers.MCDropout(0.25)(hidden)
    return keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(hidden))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`{name: (model, path)}` of the test models, saved as .keras files."""
    directory = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    models = {"classifier": _classifier(), "image": _image_regressor(), "two_inputs": _two_input_regressor()}
    out = {}
    for name, model in models.items():
        path = str(directory / f"{name}.keras")
        model.save(path)
        out[name] = (model, path)
    return out


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=RTOL, atol=ATOL)


def _json_rows(pattern):
    rows = [json.loads(line) for path in sorted(glob.glob(pattern)) for line in open(path)]
    assert rows, f"nothing written to {pattern}"
    return rows


# --- MCModelHandler in RunInference ------------------------------------------


def _run_handler(handler, elements, output_dir, pipeline_args=()):
    """Runs `elements | RunInference(handler)`, returns `{key: (inference, worker pid)}`."""
    options = beam.options.pipeline_options.PipelineOptions(
        ["--runner=DirectRunner", "--default_sdk_harness_log_level=WARNING", *pipeline_args]
    )
    prefix = os.path.join(output_dir, "results")
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | beam.Create(elements)
            | beam.Reshuffle()
            | RunInference(handler)
            | beam.Map(
                lambda kv: json.dumps(
                    {
                        "key": kv[0],
                        "pid": os.getpid(),
                        "inference": {name: value.tolist() for name, value in kv[1].inference.items()},
                    }
                )
            )
            | beam.io.WriteToText(prefix)
        )
    rows = _json_rows(prefix + "*")
    assert len(rows) == len(elements), "an element was lost or scored twice"
    return {row["key"]: (row["inference"], row["pid"]) for row in rows}


def test_two_worker_processes_over_shuffled_keys_equal_predict_mc_with_those_row_ids(saved, tmp_path):
    model, path = saved["classifier"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 6)).astype("float32")
    keys = rng.choice(10**12, size=ROWS, replace=False)
    order = rng.permutation(ROWS)  # elements arrive shuffled, not in key or row order
    elements = [(int(keys[i]), x[i]) for i in order]
    handler = MCModelHandler(path, num_samples=16, seed=SEED, outputs=CLASSIFIER_STATISTICS)

    results = _run_handler(handler, elements, str(tmp_path), TWO_WORKERS)

    assert sorted(results) == sorted(int(k) for k in keys)
    worker_pids = {pid for _, pid in results.values()}
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids  # (Create splits its elements in two)
    expected = kd.predict_mc(model, x, 16, seed=SEED, row_ids=keys)
    for name in CLASSIFIER_STATISTICS:
        got = np.array([results[int(key)][0][name] for key in keys])
        _close(got, getattr(expected, name))
    # Row ids matter: the default ids (row positions) give other samples.
    positional = kd.predict_mc(model, x, 16, seed=SEED)
    assert np.abs(positional.mean - expected.mean).max() > 1e-3


def test_string_keys_are_hashed_to_stable_row_ids(saved, tmp_path):
    model, path = saved["two_inputs"]
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 3)).astype("float32")
    b = rng.normal(size=(40, 2)).astype("float32")
    keys = [f"user-{i}" for i in range(40)]
    elements = [(key, {"a": a[i], "b": b[i]}) for i, key in enumerate(keys)]
    handler = MCModelHandler(path, num_samples=8, seed=3, outputs=("mean", "stddev", "interval_upper"))

    results = _run_handler(handler, elements, str(tmp_path))

    expected = kd.predict_mc(model, {"a": a, "b": b}, 8, seed=3, row_ids=[row_id(k) for k in keys])
    _close([results[k][0]["mean"] for k in keys], expected.mean)
    _close([results[k][0]["stddev"] for k in keys], expected.stddev)
    _close([results[k][0]["interval_upper"] for k in keys], expected.interval(0.95)[1])
    assert row_id("user-1") == row_id(b"user-1") != row_id("user-2")


def test_a_multi_output_model_with_a_string_input_gets_prefixed_statistics(tmp_path):
    text = keras.Input((1,), dtype="string", name="text")
    lookup = keras.layers.StringLookup(vocabulary=["red", "green", "blue"], output_mode="one_hot")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(lookup(text)))
    hidden = keras.layers.Dropout(0.4)(hidden)
    model = keras.Model(
        text,
        {
            "colour": keras.layers.Dense(3, activation="softmax", name="colour")(hidden),
            "size": keras.layers.Dense(1, name="size")(hidden),
        },
    )
    path = str(tmp_path / "multi.keras")
    model.save(path)
    words = np.array([["red"], ["blue"], ["green"], ["mauve"]], dtype=object)
    handler = MCModelHandler(path, num_samples=12, seed=2, outputs=("mean", "variance"))

    results = _run_handler(handler, [(i, words[i]) for i in range(4)], str(tmp_path))

    expected = kd.predict_mc(model, words, 12, seed=2)
    assert set(results[0][0]) == {"colour_mean", "colour_variance", "size_mean", "size_variance"}
    for output in ("colour", "size"):
        _close([results[i][0][f"{output}_mean"] for i in range(4)], expected[output].mean)
        _close([results[i][0][f"{output}_variance"] for i in range(4)], expected[output].variance)


def test_large_model_sharing_gives_the_same_results(saved, tmp_path):
    model, path = saved["classifier"]
    x = np.random.default_rng(2).normal(size=(64, 6)).astype("float32")
    elements = [(i, x[i]) for i in range(64)]
    handler = MCModelHandler(path, num_samples=8, seed=5, large_model=True)
    assert handler.share_model_across_processes()

    results = _run_handler(handler, elements, str(tmp_path))

    expected = kd.predict_mc(model, x, 8, seed=5)
    _close([results[i][0]["mean"] for i in range(64)], expected.mean)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 10**9}, "num_samples"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"outputs": ("mean", "median")}, "outputs"),
        ({"outputs": ()}, "outputs"),
        ({"task": "ranking"}, "task"),
        ({"interval_level": 1.0}, "interval_level"),
        ({"min_batch_size": 0}, "min_batch_size"),
        ({"min_batch_size": 64, "max_batch_size": 8}, "max_batch_size"),
        ({"jit_compile": "yes"}, "jit_compile"),
    ],
)
def test_invalid_handler_settings_raise_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MCModelHandler("model.keras", **kwargs)


@pytest.mark.parametrize(
    "elements, message",
    [
        ([(0.5, np.zeros(6, "float32"))], "not an int, str or bytes"),
        ([(1, np.zeros(6, "float32")), (2, np.zeros(5, "float32"))], "Example 2 has shape"),
        ([(1, np.array([0, 0, np.nan, 0, 0, 0], "float32"))], "Example 1 contains NaN"),
        ([(2**63, np.zeros(6, "float32"))], r"outside \[-2\*\*63"),
    ],
)
def test_bad_elements_fail_with_an_error_naming_the_element(saved, elements, message):
    _, path = saved["classifier"]
    handler = MCModelHandler(path, num_samples=4)
    scorer = handler.load_model()
    with pytest.raises(ValueError, match=message):
        handler.run_inference(elements, scorer)
    # The loaded model keeps serving good elements.
    [(key, result)] = handler.run_inference([(3, np.zeros(6, "float32"))], scorer)
    assert key == 3 and result.inference["mean"].shape == (3,)


def test_a_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model file"):
        MCModelHandler(str(tmp_path / "absent.keras")).load_model()


def test_classification_statistics_of_a_regressor_are_refused(saved):
    _, path = saved["image"]
    handler = MCModelHandler(path, num_samples=4, outputs=("mean", "mutual_information"))
    with pytest.raises(ValueError, match="classification measure"):
        handler.run_inference([(0, np.zeros((4, 4, 1), "float32"))], handler.load_model())


# --- keras-dropout score ------------------------------------------------------


def _write_tfrecord(path, images):
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for image in images:
            feature = tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel()))
            example = tf.train.Example(features=tf.train.Features(feature={"pixels": feature}))
            writer.write(example.SerializeToString())


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "keras_dropout.cli", "score", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_score_cli_on_a_tfrecord_file_keys_examples_by_position(saved, tmp_path):
    model, path = saved["image"]
    images = np.random.default_rng(3).normal(size=(ROWS, 4, 4, 1)).astype("float32")
    data = str(tmp_path / "images.tfrecord")
    _write_tfrecord(data, images)
    output = str(tmp_path / "out" / "scores.jsonl")

    process = _cli(path, data, output, "--num_samples=12", "--seed=7", "--outputs=mean,variance,interval_lower")

    assert process.returncode == 0, process.stderr[-3000:]
    assert f"{ROWS} rows scored" in process.stderr
    assert json.loads(process.stdout.strip().splitlines()[-1])["rows"] == ROWS
    rows = sorted(_json_rows(str(tmp_path / "out" / "scores-*.jsonl")), key=lambda row: row["key"])
    assert [row["key"] for row in rows] == list(range(ROWS))
    expected = kd.predict_mc(model, images, 12, seed=7)  # row ids: positions
    _close([row["mean"] for row in rows], expected.mean)
    _close([row["variance"] for row in rows], expected.variance)
    _close([row["interval_lower"] for row in rows], expected.interval(0.95)[0])
    assert not glob.glob(str(tmp_path / "out" / "scores_rejected-*"))


def test_score_cli_on_a_parquet_file_with_a_key_column_and_named_inputs(saved, tmp_path, capsys):
    import pyarrow
    import pyarrow.parquet

    model, path = saved["two_inputs"]
    rng = np.random.default_rng(4)
    a = rng.normal(size=(ROWS, 3)).astype("float32")
    b = rng.normal(size=(ROWS, 2)).astype("float32")
    keys = rng.choice(10**9, size=ROWS, replace=False)
    table = pyarrow.table({"id": keys, "a": list(a), "b": list(b)})
    data = str(tmp_path / "rows.parquet")
    pyarrow.parquet.write_table(table, data, row_group_size=700)  # several splits for Beam's reader
    output = str(tmp_path / "out" / "scores.parquet")

    from keras_dropout.cli import main

    code = main(["score", path, data, output, "--num_samples=10", "--seed=9", "--key_column=id", "--outputs=mean,stddev"])

    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == ROWS
    written = pyarrow.parquet.read_table(sorted(glob.glob(str(tmp_path / "out" / "scores-*.parquet"))))
    assert written.schema.names == ["id", "mean", "stddev"]
    result = written.to_pydict()
    position = {key: i for i, key in enumerate(result["id"])}
    assert sorted(position) == sorted(keys.tolist())
    order = [position[key] for key in keys.tolist()]
    expected = kd.predict_mc(model, {"a": a, "b": b}, 10, seed=9, row_ids=keys)
    _close(np.array(result["mean"])[order], expected.mean)
    _close(np.array(result["stddev"])[order], expected.stddev)


def test_score_csv_rejects_bad_records_with_reasons_and_scores_the_rest(saved, tmp_path):
    model, path = saved["classifier"]
    x = np.random.default_rng(5).normal(size=(50, 6)).astype("float32")
    lines = ["id," + ",".join(f"f{i}" for i in range(6))]
    for i, row in enumerate(x):
        cells = [f"{value:.7g}" for value in row]
        if i == 7:
            cells[2] = ""  # missing value
        if i == 9:
            cells[3] = "n/a"  # not a number
        lines.append(f"{100 + i}," + ",".join(cells))
    lines.insert(20, "")  # a blank line: no record
    lines.insert(30, "999,1,2")  # too few fields
    data = tmp_path / "rows.csv"
    data.write_text("\n".join(lines) + "\n")
    output = str(tmp_path / "out" / "scores.jsonl")

    process = _cli(path, str(data), output, "--key_column=id", "--num_samples=6", "--seed=1")

    assert process.returncode == 1, process.stderr[-3000:]  # some records were not scored
    assert "3 rejected" in process.stderr
    rejected = _json_rows(str(tmp_path / "out" / "scores_rejected-*.jsonl"))
    errors = {row["key"]: row["error"] for row in rejected}
    assert len(rejected) == 3 and set(errors) == {107, 109, None}
    assert "f2" in errors[107] and "'n/a'" in errors[109] and "3 fields" in errors[None]
    rows = {row["id"]: row for row in _json_rows(str(tmp_path / "out" / "scores-0*.jsonl"))}
    good = [i for i in range(50) if i not in (7, 9)]
    assert sorted(rows) == [100 + i for i in good]
    expected = kd.predict_mc(model, x[good], 6, seed=1, row_ids=[100 + i for i in good])
    _close([rows[100 + i]["mean"] for i in good], expected.mean)


def test_score_gzipped_csv_by_position_rejects_bad_rows_without_failing(saved, tmp_path):
    import gzip

    model, path = saved["classifier"]
    x = np.random.default_rng(6).normal(size=(30, 6)).astype("float32")
    lines = [",".join(f"f{i}" for i in range(6))] + [",".join(f"{v:.7g}" for v in row) for row in x]
    lines[5] = "1,2,3"  # row 4 (position 4): too few fields
    lines.insert(10, "")  # blank lines are not records and take no position
    data = tmp_path / "rows.csv.gz"
    data.write_bytes(gzip.compress(("\ufeff" + "\n".join(lines) + "\n").encode("utf-8")))  # with a BOM

    summary = score(path, str(data), str(tmp_path / "out" / "scores.jsonl"), num_samples=5, seed=4)

    assert (summary["rows"], summary["errors"]) == (29, 1)
    [rejected] = _json_rows(summary["errors_output"])
    assert rejected["key"] == 4 and "3 fields" in rejected["error"]
    rows = {row["key"]: row["mean"] for row in _json_rows(summary["output"])}
    positions = [i for i in range(30) if i != 4]
    assert sorted(rows) == positions
    expected = kd.predict_mc(model, x[positions], 5, seed=4, row_ids=positions)
    _close([rows[i] for i in positions], expected.mean)


def test_score_tfrecord_with_an_integer_key_feature(saved, tmp_path):
    import tensorflow as tf

    model, path = saved["classifier"]
    x = np.random.default_rng(7).normal(size=(200, 6)).astype("float32")
    keys = np.random.default_rng(8).choice(2**62, size=200, replace=False)
    data = str(tmp_path / "rows.tfrecord")
    with tf.io.TFRecordWriter(data) as writer:
        for key, row in zip(keys, x):
            features = {
                "features": tf.train.Feature(float_list=tf.train.FloatList(value=row)),
                "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[key])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())

    summary = score(path, data, str(tmp_path / "scores.parquet"), num_samples=7, seed=5, key_column="id")

    import pyarrow.parquet

    written = pyarrow.parquet.read_table(glob.glob(summary["output"])).to_pydict()
    assert sorted(written["id"]) == sorted(keys.tolist())  # 62-bit keys, exact
    order = {key: i for i, key in enumerate(written["id"])}
    expected = kd.predict_mc(model, x, 7, seed=5, row_ids=keys)
    _close(np.array(written["mean"])[[order[k] for k in keys.tolist()]], expected.mean)


def test_score_csv_text_keys_stay_text_and_are_hashed(saved, tmp_path):
    model, path = saved["classifier"]
    x = np.random.default_rng(9).normal(size=(4, 6)).astype("float32")
    keys = ["a1", "007", "7", "b-2"]
    lines = ["name," + ",".join(f"f{i}" for i in range(6))]
    lines += [f"{key}," + ",".join(f"{v:.7g}" for v in row) for key, row in zip(keys, x)]
    data = tmp_path / "rows.csv"
    data.write_text("\n".join(lines) + "\n")

    summary = score(path, str(data), str(tmp_path / "scores.jsonl"), num_samples=6, seed=6, key_column="name")

    rows = {row["name"]: row["mean"] for row in _json_rows(summary["output"])}
    assert sorted(rows) == sorted(keys)  # "007" and "7" are two keys
    expected = kd.predict_mc(model, x, 6, seed=6, row_ids=[row_id(key) for key in keys])
    _close([rows[key] for key in keys], expected.mean)


def test_score_refuses_to_mix_with_an_earlier_runs_output(saved, tmp_path):
    _, path = saved["classifier"]
    data = tmp_path / "rows.csv"
    data.write_text("f0,f1,f2,f3,f4,f5\n0,1,2,3,4,5\n")
    output = str(tmp_path / "scores.jsonl")
    score(path, str(data), output, num_samples=3)
    with pytest.raises(FileExistsError, match="exist already"):
        score(path, str(data), output, num_samples=3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["data.txt", "out.jsonl"], "--input_format"),
        (["{data}", "out.parquet", "--output_format=jsonl"], "ends in .parquet"),
        (["{data}", "out.jsonl", "--num-samples=3"], r"Unknown option\(s\) \['--num-samples'\]"),
        (["{data}", "out.jsonl", "--project", "my-project"], "--flag=value"),
        (["{directory}", "out.jsonl", "--input_format=csv"], "is a directory"),
        (["{data}", "out.txt"], "output format"),
        (["{missing}", "out.jsonl"], "No input file matches"),
        (["{data}", "out.jsonl", "--num_samples=0"], "num_samples"),
        (["{data}", "out.jsonl", "--outputs=mean,mode"], "outputs"),
        (["{data}", "out.jsonl", "--key_column=nope"], "no key column 'nope'"),
        (["{data}", "out.jsonl", "--feature_columns=x,y"], r"Feature columns \['x', 'y'\]"),
    ],
)
def test_score_refuses_bad_arguments_before_running_a_pipeline(saved, tmp_path, capsys, args, message):
    from keras_dropout.cli import main

    _, path = saved["classifier"]
    data = tmp_path / "rows.csv"
    data.write_text("f0,f1,f2,f3,f4,f5\n0,1,2,3,4,5\n")
    (tmp_path / "data.txt").write_text("0,1,2,3,4,5\n")
    args = [arg.format(data=data, missing=tmp_path / "none-*.csv", directory=tmp_path) for arg in args]
    args = [arg if arg.startswith(("-", "/")) or arg == "my-project" else str(tmp_path / arg) for arg in args]

    code = main(["score", path, *args])

    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not glob.glob(str(tmp_path / "out*"))
