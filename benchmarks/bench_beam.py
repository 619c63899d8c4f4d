"""Beam batch-scoring benchmark: `keras-dropout score` on DirectRunner beside `predict_mc`.

One run, the same rows, the same model and seed, in interleaved rounds (the medians of the
per-round figures are printed):

- `predict_mc` in this process over all rows: "cold" on a freshly loaded model (tracing
  included, as a one-off job pays it) and "warm" (a second call);
- `score` (the pipeline behind `keras-dropout score`) reading a TFRecord file and writing
  Parquet, on DirectRunner with 1 worker (in process) and with 2 worker processes
  (`--direct_num_workers=2 --direct_running_mode=multi_processing`), each with the handler's
  default batching (at least one model call's rows per batch) and with `min_batch_size=1`
  (Beam's adaptive batching from single elements up).

Rows/s are pipeline seconds (from `pipeline.run()`: workers' start-up and model loading, reading,
scoring and writing; not the launcher's checks before it, nor importing TensorFlow); the ratio
column is the pipeline's rows/s over cold `predict_mc`'s. The statistics written by
every variant are checked against `predict_mc` (the same masks: keys are row positions).

Usage:
    python benchmarks/bench_beam.py                      # 20,000 rows, 50 samples, 3 rounds
    python benchmarks/bench_beam.py --rows 100000 --hidden 1024 --rounds 1
"""

import argparse
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_dropout as kd  # noqa: E402
from keras_dropout.beam import score  # noqa: E402

TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
QUIET = ["--default_sdk_harness_log_level=WARNING"]


def build_model(features, hidden):
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(1),
        ]
    )


def write_tfrecord(path, x):
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for row in x:
            feature = tf.train.Feature(float_list=tf.train.FloatList(value=row))
            writer.write(tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString())


def time_predict_mc(model_path, x, num_samples, seed):
    model = keras.saving.load_model(model_path)
    start = time.perf_counter()
    cold = kd.predict_mc(model, x, num_samples, seed=seed, verbose=0)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    kd.predict_mc(model, x, num_samples, seed=seed, verbose=0)
    return cold, cold_s, time.perf_counter() - start


def time_score(model_path, data, directory, num_samples, expected, extra, batching):
    """Pipeline seconds of one `score` run, after checking what it wrote."""
    import pyarrow.parquet

    output = os.path.join(directory, f"scores{time.perf_counter_ns()}.parquet")
    summary = score(model_path, data, output, num_samples=num_samples, seed=0, pipeline_args=QUIET + extra, **batching)
    written = pyarrow.parquet.read_table(sorted(glob.glob(output[: -len(".parquet")] + "-*.parquet"))).to_pydict()
    mean = np.asarray(written["mean"])[np.argsort(written["key"])]
    if summary["rows"] != len(expected.mean) or not np.allclose(mean, expected.mean, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"score's statistics differ from predict_mc's ({extra}, {batching})")
    return summary["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128, help="units of the two hidden layers")
    parser.add_argument("--num_samples", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="bench_beam_")
    keras.utils.set_random_seed(0)
    model_path = os.path.join(directory, "model.keras")
    build_model(args.features, args.hidden).save(model_path)
    x = np.random.default_rng(0).normal(size=(args.rows, args.features)).astype("float32")
    data = os.path.join(directory, "rows.tfrecord")
    write_tfrecord(data, x)
    variants = {}
    for workers, extra in (("1 worker (in process)", []), ("2 worker processes", TWO_WORKERS)):
        variants[f"score, {workers}"] = (extra, {})
        variants[f"score, {workers}, min_batch_size=1"] = (extra, {"min_batch_size": 1})
    seconds = {name: [] for name in ["predict_mc cold", "predict_mc warm", *variants]}
    for _ in range(args.rounds):
        expected, cold_s, warm_s = time_predict_mc(model_path, x, args.num_samples, 0)
        seconds["predict_mc cold"].append(cold_s)
        seconds["predict_mc warm"].append(warm_s)
        for name, (extra, batching) in variants.items():
            seconds[name].append(time_score(model_path, data, directory, args.num_samples, expected, extra, batching))
    reference = args.rows / statistics.median(seconds["predict_mc cold"])
    print(f"\n{args.rows} rows x {args.num_samples} samples, {args.features}-{args.hidden}-{args.hidden}-1 MLP, {args.rounds} round(s)\n")
    print(f"{'variant':55s} {'rows/s':>9s} {'/ predict_mc cold':>18s}")
    for name, values in seconds.items():
        rate = args.rows / statistics.median(values)
        print(f"{name:55s} {rate:9.0f} {rate / reference:18.2f}")
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
