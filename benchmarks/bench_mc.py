"""Monte Carlo inference benchmark: `kd.predict_mc` against the loops users write by hand.

Three measurements, all on the Keras backend of this process (TensorFlow by
default; `KERAS_BACKEND=jax` works too):

1. MLP (784 -> 3 x Dense(512, relu) each followed by Dropout(0.2) -> Dense(10,
   softmax)), B=256 rows, S=50 samples. `predict_mc` (with `jit_compile`
   "auto", False and True) against
   - `with kd.sampling(): [model(x) for _ in range(S)]` (eager calls),
   - the same loop over a compiled forward (`tf.function` / `jax.jit`),
   - `[stock(x, training=True) for _ in range(S)]` on the stock Keras model,
   - `with kd.sampling(): [model.predict(x) for _ in range(S)]`,
   and a 2048 x 2048 @ 2048 x 2048 float32 `matmul` timed in the same rounds:
   the MLP's achieved FLOP/s as a fraction of the matmul's. FLOPs counted are
   the ones executed (2 x multiply-adds of the Dense layers; the first Dense
   runs once per row thanks to prefix reuse, the others once per (row,
   sample)); the naive S x full-forward count is shown beside it.
2. CNN with dropout only in the classifier head (Conv 32, 32, pool, 64, 64,
   pool, Flatten, Dense(256, relu), Dropout(0.5), Dense(10, softmax): the conv
   trunk is deterministic, which is where prefix reuse pays), B=256, S=100.
   The same loops, plus one deterministic `model.predict(x)` and one
   deterministic compiled `model(x)`: the cost of S=100 `predict_mc` relative
   to a single plain prediction. A CNN forward
   pass is expensive, so the naive loops run `--loop-samples` iterations and
   their time is scaled to S (each iteration is identical work).
3. Memory: peak RSS growth of one `predict_mc(S=1000)` call on 100,000 rows
   of a small model (8 -> Dense(64, relu) -> Dropout(0.2) -> Dense(64, relu)
   -> Dense(1)) for
   several `chunk_size` values, each in a fresh subprocess: after a warm-up
   call on one call's worth of rows (which compiles everything), the kernel's
   peak-RSS count is reset (`/proc/self/clear_refs`) and read back (VmHWM,
   the counter `ru_maxrss` reports; a child's `ru_maxrss` alone would start
   at its parent's peak) and the resident size just before the call is
   subtracted. RSS, because tracemalloc does not see TensorFlow's
   allocations. Also 10x fewer rows at the largest chunk size. Each cell
   runs twice: with glibc's default malloc, whose adaptive mmap threshold
   leaves the freed per-call temporaries of small chunks resident (RSS then
   measures fragmentation), and with `MALLOC_MMAP_THRESHOLD_=131072`, which
   returns them. The peak follows `chunk_size` (plus a constant: host-side
   statistics are computed in blocks of at most 16 MiB of samples), not
   rows x S.

4. New row counts (`--parts rows`): on the MLP of 1 (S=20) and on a fresh copy of it each time,
   after one warm-up call at 100 rows, 7 `predict_mc` calls at 7 new row counts
   (101, 97, 90, 115, 120, 127, 80) against 7 calls at 100 rows, for `jit_compile` True
   (XLA compiles per shape) and False; the ratio is what a new batch size costs. Rows are
   padded to power-of-two buckets, so the new counts reuse what the warm-up compiled.

5. `jit_compile="auto"` (`--parts auto`, TensorFlow): on the MLP (B=256, S=50), the
   head-dropout CNN (B=256, S=100) and EfficientNetB0 (weights=None, 32x32, top dropout
   and stochastic depth, B=16, S=8), each in a fresh copy per variant: first-call time of
   False (graph), True (XLA) and "auto", then "auto" is called until it has timed both
   paths and chosen (at most `--auto-warmup-seconds`; an undecided "auto" runs the graph),
   then the three are timed in interleaved rounds. Reported: auto / the faster path
   (goal <= 1.15) and XLA / graph.

Timing: every variant of a measurement is warmed up, then `--repeats` rounds
run each once, alternating the order; times are medians over rounds and
ratios are medians of the per-round ratios. The machine's other load slows
a whole round alike, so compare ratios, not times.

Goals: predict_mc >= 3x faster than the naive sampled loop (MLP), >= 10x
(head-dropout CNN); S=100 predict_mc <= 2x one `model.predict` (CNN); MLP
throughput >= 50% of the matmul's FLOP/s; 7 calls at 7 new row counts <= 2.5x 7
calls at one count; `jit_compile="auto"` <= 1.15x the faster path on each of the three models.

Usage:
    python benchmarks/bench_mc.py
    python benchmarks/bench_mc.py --repeats 3 --parts mlp,cnn
    python benchmarks/bench_mc.py --parts memory --memory-rows 100000 --memory-samples 1000
    python benchmarks/bench_mc.py --parts rows
    python benchmarks/bench_mc.py --parts auto --repeats 5
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np

from bench_dropout import median_ratio
from bench_dropout import median_time
from bench_dropout import time_interleaved

MLP_FEATURES, MLP_WIDTH, MLP_DEPTH, CLASSES = 784, 512, 3, 10
MATMUL_SIZE = 2048
SMALL_HIDDEN = 64


# ----------------------------------------------------------------------------- models


def build_mlp(seed=0):
    """The stock Keras MLP: Dropout after every hidden layer."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((MLP_FEATURES,))]
    for i in range(MLP_DEPTH):
        layers += [keras.layers.Dense(MLP_WIDTH, activation="relu", name=f"dense_{i}"),
                   keras.layers.Dropout(0.2, name=f"dropout_{i}")]
    layers.append(keras.layers.Dense(CLASSES, activation="softmax", name="out"))
    return keras.Sequential(layers, name="mlp")


def mlp_flops(rows, samples):
    """(executed with prefix reuse, naive S full passes) FLOPs of one MC run."""
    first = 2 * MLP_FEATURES * MLP_WIDTH
    rest = 2 * (MLP_DEPTH - 1) * MLP_WIDTH * MLP_WIDTH + 2 * MLP_WIDTH * CLASSES
    return rows * first + rows * samples * rest, rows * samples * (first + rest)


def build_cnn(seed=0):
    """A stock Keras CNN whose only dropout is in the classifier head."""
    import keras

    keras.utils.set_random_seed(seed)
    conv = {"kernel_size": 3, "padding": "same", "activation": "relu"}
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(32, **conv),
            keras.layers.Conv2D(32, **conv),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, **conv),
            keras.layers.Conv2D(64, **conv),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ],
        name="cnn",
    )


def build_small(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(SMALL_HIDDEN, activation="relu"),
            keras.layers.Dropout(0.2),
            # A matrix product after the dropout: XLA fuses a dropout feeding
            # Dense(1) straight into the dot, so nothing chunk-sized would
            # ever be materialized.
            keras.layers.Dense(SMALL_HIDDEN, activation="relu"),
            keras.layers.Dense(1),
        ],
        name="small",
    )


# ----------------------------------------------------------------------------- helpers


def _block(value):
    """Waits for a result: JAX dispatches asynchronously (CPU TensorFlow calls return when done)."""
    from keras import tree

    for leaf in tree.flatten(value):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return value


def _compiled_forward(model):
    """`model(x)` (training=False) compiled once: tf.function or jax.jit."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x: model(x, training=False), autograph=False)
    import jax

    # The sampling switch lives in non-trainable state: thread it through.
    step = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False))
    cell = {"ntv": None}

    def forward(x):
        if cell["ntv"] is None:
            cell["ntv"] = [v.value for v in model.non_trainable_variables]
        y, cell["ntv"] = step([v.value for v in model.trainable_variables], cell["ntv"], x)
        return y

    return forward


def _fmt_ms(seconds):
    return f"{seconds * 1e3:,.1f}"


def _matmul_callable():
    import keras
    from keras import ops

    rng = np.random.default_rng(0)
    a = ops.convert_to_tensor(rng.normal(size=(MATMUL_SIZE, MATMUL_SIZE)).astype("float32"))
    b = ops.convert_to_tensor(rng.normal(size=(MATMUL_SIZE, MATMUL_SIZE)).astype("float32"))
    if keras.backend.backend() == "jax":
        import jax

        matmul = jax.jit(lambda a, b: a @ b)
    else:
        matmul = ops.matmul
    return lambda: _block(matmul(a, b)), 2 * MATMUL_SIZE**3


def _predict_mc_variants(model, x, num_samples):
    import keras_dropout as kd

    variants = {}
    for label, jit in (("auto", "auto"), ("False", False), ("True", True)):
        def run(jit=jit):
            return kd.predict_mc(model, x, num_samples, seed=0, jit_compile=jit, verbose=0)

        variants[f"predict_mc jit_compile={label}"] = run
    return variants


def _first_call_seconds(functions):
    """Runs each callable once (the warm-up that compiles) and times it."""
    first = {}
    for name, fn in functions.items():
        start = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - start
    return first


# ----------------------------------------------------------------------------- MLP


def bench_mlp(repeats, rows=256, num_samples=50):
    import keras_dropout as kd

    stock = build_mlp()
    ours = kd.convert(stock)
    x = np.random.default_rng(1).normal(size=(rows, MLP_FEATURES)).astype("float32")
    forward = _compiled_forward(ours)

    def sampled_loop():
        with kd.sampling():
            return _block([ours(x) for _ in range(num_samples)])

    def compiled_loop():
        with kd.sampling():
            return _block([forward(x) for _ in range(num_samples)])

    def training_loop():
        return _block([stock(x, training=True) for _ in range(num_samples)])

    def predict_loop():
        with kd.sampling():
            return [ours.predict(x, batch_size=rows, verbose=0) for _ in range(num_samples)]

    matmul, matmul_flops = _matmul_callable()
    functions = _predict_mc_variants(ours, x, num_samples)
    functions.update({
        "loop: model(x) in kd.sampling()": sampled_loop,
        "loop: compiled model(x) in kd.sampling()": compiled_loop,
        "loop: stock model(x, training=True)": training_loop,
        "loop: model.predict(x) in kd.sampling()": predict_loop,
        f"matmul {MATMUL_SIZE}^3": matmul,
    })
    first = _first_call_seconds(functions)
    times = time_interleaved(functions, repeats, warmup=1)
    executed, naive = mlp_flops(rows, num_samples)
    return {"times": times, "first": first, "flops": executed, "naive_flops": naive,
            "matmul_flops": matmul_flops, "rows": rows, "samples": num_samples}


def report_mlp(result):
    times, first = result["times"], result["first"]
    reference = "predict_mc jit_compile=auto"
    matmul = f"matmul {MATMUL_SIZE}^3"
    lines = [
        (f"MLP {MLP_FEATURES}-{MLP_WIDTH}x{MLP_DEPTH}-{CLASSES}, dropout after every hidden layer, "
         f"B={result['rows']}, S={result['samples']}"),
        "",
        "| variant | first call ms | median ms | / predict_mc (auto) | GFLOP/s | of matmul FLOP/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in times:
        if name == matmul:
            flops = result["matmul_flops"]
        else:
            flops = result["flops"] if name.startswith("predict_mc") else result["naive_flops"]
        # FLOP/s relative to the matmul's, from per-round paired time ratios.
        of_matmul = (flops / result["matmul_flops"]) / median_ratio(times, name, matmul)
        versus = "" if name == matmul else f"{median_ratio(times, name, reference):.2f}"
        lines.append(
            f"| {name} | {_fmt_ms(first[name])} | {_fmt_ms(median_time(times, name))} | {versus} | "
            f"{flops / median_time(times, name) / 1e9:.1f} | {of_matmul:.2f} |"
        )
    lines.append("")
    lines.append(
        f"FLOPs counted: predict_mc {result['flops'] / 1e9:.2f} G (executed, with prefix reuse); "
        f"loops {result['naive_flops'] / 1e9:.2f} G (S full forward passes)."
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CNN


def bench_cnn(repeats, rows=256, num_samples=100, loop_samples=10):
    import keras_dropout as kd

    stock = build_cnn()
    ours = kd.convert(stock)
    x = np.random.default_rng(2).uniform(size=(rows, 32, 32, 3)).astype("float32")
    forward = _compiled_forward(ours)
    loop_samples = min(loop_samples, num_samples)

    def sampled_loop():
        with kd.sampling():
            return _block([ours(x) for _ in range(loop_samples)])

    def compiled_loop():
        with kd.sampling():
            return _block([forward(x) for _ in range(loop_samples)])

    def training_loop():
        return _block([stock(x, training=True) for _ in range(loop_samples)])

    def predict_loop():
        with kd.sampling():
            return [ours.predict(x, batch_size=rows, verbose=0) for _ in range(loop_samples)]

    def one_predict():
        return stock.predict(x, batch_size=rows, verbose=0)

    deterministic = _compiled_forward(stock)

    def one_forward():
        return _block(deterministic(x))

    functions = _predict_mc_variants(ours, x, num_samples)
    functions.update({
        "one deterministic model.predict(x)": one_predict,
        "one deterministic compiled model(x)": one_forward,
        "loop: model(x) in kd.sampling()": sampled_loop,
        "loop: compiled model(x) in kd.sampling()": compiled_loop,
        "loop: stock model(x, training=True)": training_loop,
        "loop: model.predict(x) in kd.sampling()": predict_loop,
    })
    first = _first_call_seconds(functions)
    times = time_interleaved(functions, repeats, warmup=1)
    return {"times": times, "first": first, "rows": rows, "samples": num_samples,
            "loop_samples": loop_samples}


def report_cnn(result):
    times, first = result["times"], result["first"]
    reference = "predict_mc jit_compile=auto"
    predict = "one deterministic model.predict(x)"
    forward = "one deterministic compiled model(x)"
    scale = result["samples"] / result["loop_samples"]
    lines = [
        (f"CNN, dropout only in the classifier head, B={result['rows']}, S={result['samples']} "
         f"(loops: {result['loop_samples']} iterations timed, x{scale:g} to reach S)"),
        "",
        ("| variant | first call ms | median ms (for S) | / predict_mc (auto) | / one model.predict | "
         "/ one compiled model(x) |"),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in times:
        factor = scale if name.startswith("loop") else 1.0
        lines.append(
            f"| {name} | {_fmt_ms(first[name])} | {_fmt_ms(median_time(times, name) * factor)} | "
            f"{median_ratio(times, name, reference) * factor:.2f} | "
            f"{median_ratio(times, name, predict) * factor:.2f} | "
            f"{median_ratio(times, name, forward) * factor:.2f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- memory


def _rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss():
    """Restarts the kernel's peak-RSS count (Linux >= 4.0); False if it cannot.

    Without it the peak would include the warm-up and, through exec, the
    parent process: `ru_maxrss` of a child starts at its parent's peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset):
    """Peak RSS since the reset (VmHWM), else `ru_maxrss` since the start."""
    if reset:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_worker(rows, num_samples, chunk_size, jit_compile):
    """In a fresh process: peak RSS growth of one predict_mc call."""
    import keras_dropout as kd

    model = build_small()
    x = np.random.default_rng(3).normal(size=(rows, 8)).astype("float32")
    # Warm-up (imports, thread pools, kernels, compilation) on one call's
    # worth of rows: predict_mc's own split, so the measured call compiles
    # nothing new.
    per_call = max(1, chunk_size // min(num_samples, chunk_size))
    per_call = math.ceil(rows / math.ceil(rows / per_call))
    kd.predict_mc(model, x[:per_call], num_samples, seed=0, chunk_size=chunk_size,
                  jit_compile=jit_compile, verbose=0)
    before = _rss_bytes()
    reset = _reset_peak_rss()
    start = time.perf_counter()
    result = kd.predict_mc(model, x, num_samples, seed=0, chunk_size=chunk_size,
                           jit_compile=jit_compile, verbose=0)
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes(reset)
    assert result.mean.shape == (rows, 1)
    print("RESULT " + json.dumps({
        "rows": rows, "samples": num_samples, "chunk_size": chunk_size, "rss_before": before,
        "peak": peak, "method": "VmHWM after clear_refs" if reset else "ru_maxrss", "seconds": seconds,
    }), flush=True)


# glibc's malloc raises its mmap threshold (up to 32 MiB) after freeing a
# mapped block, after which the per-call temporaries of small chunks come
# from its arenas and stay resident: RSS then measures fragmentation, not
# predict_mc. A fixed threshold returns every block >= 128 KiB to the kernel.
ALLOCATORS = {"glibc default": {}, "MALLOC_MMAP_THRESHOLD_=131072": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def bench_memory(rows, num_samples, chunk_sizes, jit_compile):
    settings = [(rows, c) for c in chunk_sizes] + [(rows // 10, chunk_sizes[-1])]
    results = []
    for setting_rows, chunk in settings:
        row = None
        for allocator, variables in ALLOCATORS.items():
            print(f"  memory: rows={setting_rows} chunk_size={chunk} {allocator} ...", file=sys.stderr, flush=True)
            command = [sys.executable, os.path.abspath(__file__), "--memory-worker",
                       json.dumps([setting_rows, num_samples, chunk, jit_compile])]
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            completed = subprocess.run(command, capture_output=True, text=True, check=False,
                                       env={**env, **variables})
            line = [out for out in completed.stdout.splitlines() if out.startswith("RESULT ")]
            if not line:
                raise RuntimeError(f"memory worker failed:\n{completed.stdout}\n{completed.stderr}")
            measured = json.loads(line[-1][len("RESULT "):])
            row = row or {**measured, "growth": {}, "seconds": {}}
            row["growth"][allocator] = max(measured["peak"] - measured["rss_before"], 0)
            row["seconds"][allocator] = measured["seconds"]
        results.append(row)
    return results


def report_memory(results, jit_compile):
    fixed, default = "MALLOC_MMAP_THRESHOLD_=131072", "glibc default"
    lines = [
        (f"Peak RSS growth of one predict_mc call (small model 8-64-64-1, jit_compile={jit_compile}); "
         f"one fresh process per cell; peak from {results[0]['method']}"),
        "",
        (f"| rows | S | rows x S | chunk_size | peak RSS growth MiB, {fixed} | peak RSS growth MiB, "
         f"{default} | one (pairs, 64) activation of one call MiB | the same for all rows x S MiB | seconds |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        pairs = r["rows"] * r["samples"]
        per_call = min(r["chunk_size"], pairs) * SMALL_HIDDEN * 4
        lines.append(
            f"| {r['rows']:,} | {r['samples']:,} | {pairs:,} | {r['chunk_size']:,} | "
            f"{r['growth'][fixed] / 2**20:,.0f} | {r['growth'][default] / 2**20:,.0f} | "
            f"{per_call / 2**20:,.0f} | {pairs * SMALL_HIDDEN * 4 / 2**20:,.0f} | {r['seconds'][fixed]:.1f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


NEW_ROW_COUNTS = (101, 97, 90, 115, 120, 127, 80)


def bench_rows(num_samples=20):
    """Seconds of 7 calls at new row counts and of 7 at one count, per `jit_compile`.

    Each variant gets a fresh model (its own compiled functions), warmed up at 100 rows.
    """
    import keras

    import keras_dropout as kd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(max(NEW_ROW_COUNTS), 784)).astype("float32")
    result = {}
    for jit_compile in (True, False):
        for name, counts in (("same", (100,) * len(NEW_ROW_COUNTS)), ("new", NEW_ROW_COUNTS)):
            model = build_mlp()
            kd.predict_mc(model, x[:100], num_samples, seed=0, jit_compile=jit_compile)
            started = time.perf_counter()
            for count in counts:
                kd.predict_mc(model, x[:count], num_samples, seed=0, jit_compile=jit_compile)
            result[(jit_compile, name)] = time.perf_counter() - started
            keras.backend.clear_session()
    return result


def report_rows(result):
    lines = [
        f"New row counts: 7 predict_mc calls (MLP, S=20) at {', '.join(map(str, NEW_ROW_COUNTS))} "
        "rows against 7 at 100, after one call at 100",
        "",
        "| jit_compile | 7 at 100 rows (s) | 7 at new counts (s) | ratio |",
        "|---|---:|---:|---:|",
    ]
    for jit_compile in (True, False):
        same, new = result[(jit_compile, "same")], result[(jit_compile, "new")]
        lines.append(f"| {jit_compile} | {same:.2f} | {new:.2f} | {new / same:.2f} |")
    return "\n".join(lines)


def build_efficientnet(seed=0):
    """keras.applications.EfficientNetB0, random weights, 32x32 inputs, 10 classes."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10)


AUTO_MODELS = {
    # name: (builder, input shape past the batch, rows, samples)
    "MLP": (build_mlp, (MLP_FEATURES,), 256, 50),
    "CNN (head dropout)": (build_cnn, (32, 32, 3), 256, 100),
    "EfficientNetB0": (build_efficientnet, (32, 32, 3), 16, 8),
}


def _auto_choice(model):
    """The path `jit_compile="auto"` settled on for `model`, or None while it is undecided."""
    from keras_dropout import mc

    choices = {trial.choice for trial in mc._path_trials.get(model, {}).values()}
    return choices.pop() if len(choices) == 1 and None not in choices else None


def bench_auto(repeats, warmup_seconds):
    import keras

    import keras_dropout as kd

    results = {}
    for name, (build, shape, rows, num_samples) in AUTO_MODELS.items():
        print(f"  auto: {name}", file=sys.stderr, flush=True)
        x = np.random.default_rng(0).uniform(size=(rows,) + shape).astype("float32")
        models = {jit: build() for jit in (False, True, "auto")}

        def run(jit):
            return kd.predict_mc(models[jit], x, num_samples, seed=0, jit_compile=jit, verbose=0)

        functions = {f"jit_compile={jit}": (lambda jit=jit: run(jit)) for jit in models}
        first = _first_call_seconds(functions)
        started, calls = time.perf_counter(), 0
        while _auto_choice(models["auto"]) is None and time.perf_counter() - started < warmup_seconds:
            run("auto")
            calls += 1
        decided = _auto_choice(models["auto"])
        times = time_interleaved(functions, repeats, warmup=1)
        results[name] = {
            "first": first, "times": times, "choice": decided or "undecided (graph)",
            "decision_calls": calls, "decision_seconds": time.perf_counter() - started,
            "rows": rows, "samples": num_samples,
        }
        keras.backend.clear_session()
    return results


def report_auto(results):
    lines = [
        'jit_compile="auto" against both paths (each in a fresh model)',
        "",
        "| model | rows x S | first call False / True / auto (s) | auto chose | calls to decide | "
        "False ms | True ms | auto ms | XLA / graph | auto / faster |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        times, first = result["times"], result["first"]
        xla_over_graph = median_ratio(times, "jit_compile=True", "jit_compile=False")
        faster = "jit_compile=True" if xla_over_graph < 1 else "jit_compile=False"
        lines.append(
            f"| {name} | {result['rows']} x {result['samples']} | "
            + " / ".join(f"{first[f'jit_compile={j}']:.1f}" for j in (False, True, "auto"))
            + f" | {result['choice']} | {result['decision_calls']} | "
            + " | ".join(_fmt_ms(median_time(times, f"jit_compile={j}")) for j in (False, True, "auto"))
            + f" | {xla_over_graph:.2f} | {median_ratio(times, 'jit_compile=auto', faster):.2f} |"
        )
    return "\n".join(lines)


def check_goals(mlp=None, cnn=None, rows=None, auto=None):
    checks = []
    reference = "predict_mc jit_compile=auto"
    if mlp is not None:
        times = mlp["times"]
        speedup = median_ratio(times, "loop: model(x) in kd.sampling()", reference)
        checks.append(("MLP: predict_mc >= 3x faster than the sampled model(x) loop", speedup, speedup >= 3))
        matmul = f"matmul {MATMUL_SIZE}^3"
        fraction = (mlp["flops"] / mlp["matmul_flops"]) / median_ratio(times, reference, matmul)
        checks.append(("MLP: predict_mc FLOP/s >= 50% of matmul", fraction, fraction >= 0.5))
    if cnn is not None:
        times = cnn["times"]
        scale = cnn["samples"] / cnn["loop_samples"]
        speedup = median_ratio(times, "loop: model(x) in kd.sampling()", reference) * scale
        checks.append(("CNN: predict_mc >= 10x faster than the sampled model(x) loop", speedup, speedup >= 10))
        cost = median_ratio(times, reference, "one deterministic model.predict(x)")
        checks.append(("CNN: S=100 predict_mc <= 2x one model.predict", cost, cost <= 2))
    if rows is not None:
        for jit_compile in (True, False):
            ratio = rows[(jit_compile, "new")] / rows[(jit_compile, "same")]
            checks.append(
                (f"7 new row counts <= 2.5x one count (jit_compile={jit_compile})", ratio, ratio <= 2.5)
            )
    for name, result in (auto or {}).items():
        times = result["times"]
        faster = min(("jit_compile=True", "jit_compile=False"), key=lambda v: median_time(times, v))
        ratio = median_ratio(times, "jit_compile=auto", faster)
        checks.append((f'{name}: jit_compile="auto" <= 1.15x the faster path', ratio, ratio <= 1.15))
    return checks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="mlp,cnn,memory,rows,auto", help="comma-separated: mlp,cnn,memory,rows,auto")
    parser.add_argument("--auto-warmup-seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (median taken)")
    parser.add_argument("--loop-samples", type=int, default=10, help="CNN loop iterations timed")
    parser.add_argument("--memory-rows", type=int, default=100_000)
    parser.add_argument("--memory-samples", type=int, default=1000)
    parser.add_argument("--chunk-sizes", default="8192,65536,524288,2097152")
    parser.add_argument("--memory-jit-compile", default="auto", help="auto, true or false")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(*json.loads(args.memory_worker))
        return
    import keras

    parts = args.parts.split(",")
    print(f"backend {keras.backend.backend()}, {os.cpu_count()} CPU(s), {args.repeats} interleaved rounds\n")
    mlp = cnn = None
    if "mlp" in parts:
        print("running mlp ...", file=sys.stderr, flush=True)
        mlp = bench_mlp(args.repeats)
        print(report_mlp(mlp) + "\n", flush=True)
    if "cnn" in parts:
        print("running cnn ...", file=sys.stderr, flush=True)
        cnn = bench_cnn(args.repeats, loop_samples=args.loop_samples)
        print(report_cnn(cnn) + "\n", flush=True)
    if "memory" in parts:
        print("running memory ...", file=sys.stderr, flush=True)
        jit = {"auto": "auto", "true": True, "false": False}[args.memory_jit_compile.lower()]
        chunks = [int(c) for c in args.chunk_sizes.split(",")]
        memory = bench_memory(args.memory_rows, args.memory_samples, chunks, jit)
        print(report_memory(memory, jit) + "\n", flush=True)
    rows = None
    if "rows" in parts:
        print("running rows ...", file=sys.stderr, flush=True)
        rows = bench_rows()
        print(report_rows(rows) + "\n", flush=True)
    auto = None
    if "auto" in parts and keras.backend.backend() == "tensorflow":
        print("running auto ...", file=sys.stderr, flush=True)
        auto = bench_auto(args.repeats, args.auto_warmup_seconds)
        print(report_auto(auto) + "\n", flush=True)
    for goal, measured, met in check_goals(mlp, cnn, rows, auto):
        print(f"- {goal}: {measured:.2f} {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
