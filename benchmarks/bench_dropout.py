"""Dropout layer benchmark: our `MCDropout` against `x * 2` and Keras' `Dropout`.

One elementwise layer on `--size` float32 values (default 2**24, a 64 MiB
tensor shaped (size / 1024, 1024)), timed in three execution modes:

- `tf-graph`: `tf.function` on the TensorFlow backend (TF's executor; our
  masks take TF's stateless Philox path with 16-bit keep draws);
- `tf-xla`: `tf.function(jit_compile=True)` (our masks take the integer
  hash, which XLA fuses into the multiply);
- `jax-jit`: `jax.jit` of `layer.stateless_call` on Keras' JAX backend.

The backend is fixed per process, so each backend is measured in its own
subprocess (`KERAS_BACKEND=tensorflow|jax`).

Variants, each forward and forward+backward (`value_and_grad` of
`sum(layer(x) * w)` with respect to `x`, for a fixed random `w`):

- `x*2`: the floor, one read and one write of the tensor;
- `keras Dropout`: `keras.layers.Dropout(0.5)(x, training=True)`;
- `ours training`: `kd.layers.MCDropout(0.5)(x, training=True)`;
- `ours sampling`: `MCDropout(0.5)(x)` (training=False) inside `kd.sampling()`:
  the inference-time switch, read from the layer's state variable at run time;
- `ours switch off`: the same call with the layer's switch off: deterministic
  inference (what `model.predict` costs outside `kd.sampling()`), where Keras'
  Dropout is free; the price of reading the switch at run time.

Timing: all variants of one mode are warmed up, then `--repeats` rounds run
each variant once, in alternating order; a variant's time is the median over
rounds and its ratio to `x*2` (or to Keras' Dropout) is the median of the
per-round ratios. Other work on the machine slows every variant of a round
alike, so the ratios are what to compare across machines, not the times. A
variant slower than 3 s a call (Keras' Dropout under TF XLA on CPU) runs in
the first 3 rounds only.

Usage:
    python benchmarks/bench_dropout.py
    python benchmarks/bench_dropout.py --size 2**20 --repeats 5 --backends jax
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RATE = 0.5
VARIANTS = ("x*2", "keras Dropout", "ours training", "ours sampling", "ours switch off")
MODES = {"tensorflow": ("tf-graph", "tf-xla"), "jax": ("jax-jit",)}
GOALS = """Goals:
- forward, ours sampling <= 1.5x x*2 under tf-xla and jax-jit;
- forward and forward+backward, tf-graph: ours <= 0.8x Keras' Dropout;
- forward+backward under XLA (tf-xla, jax-jit): ours <= 1.5x x*2 forward+backward."""


def parse_size(text):
    """An element count: an integer or `base**exponent` (e.g. 2**24)."""
    if "**" in text:
        base, exponent = text.split("**")
        return int(base) ** int(exponent)
    return int(text)


def time_interleaved(functions, repeats, warmup=2, slow_seconds=3.0, slow_repeats=3):
    """Times zero-argument callables side by side, `repeats` rounds.

    Every callable must block until its work is done. Each round runs every
    callable once, in alternating order, so drift in the machine's load hits
    all of them alike. A callable whose last warm-up call took longer than
    `slow_seconds` (Keras' Dropout under TF XLA on CPU: seconds a call) only
    runs in the first `slow_repeats` rounds; its ratios pair those rounds.

    Returns:
        `{name: [seconds per round]}`.
    """
    names = list(functions)
    rounds = {}
    for name in names:
        for _ in range(warmup):
            start = time.perf_counter()
            functions[name]()
            last = time.perf_counter() - start
        rounds[name] = min(repeats, slow_repeats) if last > slow_seconds else repeats
    times = {name: [] for name in names}
    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            if round_index >= rounds[name]:
                continue
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_time(times, name):
    return statistics.median(times[name])


def median_ratio(times, name, reference):
    """Median over shared rounds of `name`'s time / `reference`'s time in that round."""
    return statistics.median(t / r for t, r in zip(times[name], times[reference], strict=False))


# ----------------------------------------------------------------------------- TensorFlow


def _tf_variants(shape):
    import keras
    import tensorflow as tf

    import keras_dropout as kd

    x = tf.random.uniform(shape, seed=1)
    w = tf.random.uniform(shape, seed=2)
    keras_dropout = keras.layers.Dropout(RATE, seed=3)
    ours_training = kd.layers.MCDropout(RATE, name="ours_training")
    ours_sampling = kd.layers.MCDropout(RATE, name="ours_sampling")
    ours_off = kd.layers.MCDropout(RATE, name="ours_switch_off")
    forward = {
        "x*2": lambda t: t * 2.0,
        "keras Dropout": lambda t: keras_dropout(t, training=True),
        "ours training": lambda t: ours_training(t, training=True),
        "ours sampling": lambda t: ours_sampling(t, training=False),
        "ours switch off": lambda t: ours_off(t, training=False),
    }
    return x, w, forward, ours_off


def _tf_function(fn, w, backward, jit_compile):
    import tensorflow as tf

    if backward:

        def body(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(fn(x) * w)
            return loss, tape.gradient(loss, x)

    else:
        body = fn
    return tf.function(body, jit_compile=jit_compile, autograph=False)


def run_tensorflow(shape, repeats):
    import keras_dropout as kd

    x, w, forward, ours_off = _tf_variants(shape)
    results = {}
    with kd.sampling(seed=0):
        ours_off.set_sampling_enabled(False)
        for mode, jit_compile in (("tf-graph", False), ("tf-xla", True)):
            for backward in (False, True):
                functions = {}
                for name, fn in forward.items():
                    compiled = _tf_function(fn, w, backward, jit_compile)
                    # CPU tf.function calls return when the work is done.
                    functions[name] = lambda c=compiled: c(x)
                results[_key(mode, backward)] = time_interleaved(functions, repeats)
    return results


# ----------------------------------------------------------------------------- JAX


def _jax_step(layer, training, backward, w):
    """A jitted `(state, x) -> (result, state)` for one layer (None: x * 2)."""
    import jax
    import jax.numpy as jnp

    def apply(state, x):
        if layer is None:
            return x * 2.0, state
        return layer.stateless_call([], state, x, training=training)

    def loss(x, state, w):
        y, state = apply(state, x)
        return jnp.sum(y * w), state

    grad = jax.value_and_grad(loss, has_aux=True)

    def step(state, x, w):
        if not backward:
            return apply(state, x)
        (value, state), dx = grad(x, state, w)
        return (value, dx), state

    # `w` is an argument, not a closed-over constant XLA could fold.
    compiled = jax.jit(step)
    return lambda state, x: compiled(state, x, w)


def jax_callables(shape, backward, seed=0):
    """The four variants as blocking zero-argument callables on `jax.jit`.

    Must be called inside `kd.sampling()`: the sampling variant's state is
    read when its callable is built.
    """
    import jax
    import keras

    import keras_dropout as kd

    key_x, key_w = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.uniform(key_x, shape, "float32")
    w = jax.random.uniform(key_w, shape, "float32")
    layers = {
        "x*2": (None, False),
        "keras Dropout": (keras.layers.Dropout(RATE, seed=3), True),
        "ours training": (kd.layers.MCDropout(RATE, name="ours_training"), True),
        "ours sampling": (kd.layers.MCDropout(RATE, name="ours_sampling"), False),
        "ours switch off": (kd.layers.MCDropout(RATE, name="ours_switch_off"), False),
    }
    functions = {}
    for name, (layer, training) in layers.items():
        if layer is not None:
            layer.build(shape)
        if name == "ours switch off":
            layer.set_sampling_enabled(False)
        step = _jax_step(layer, training, backward, w)
        state = [v.value for v in layer.non_trainable_variables] if layer is not None else []
        cell = {"state": state}

        def call(step=step, cell=cell):
            result, cell["state"] = step(cell["state"], x)
            jax.block_until_ready(result)
            return result

        functions[name] = call
    return x, functions


def run_jax(shape, repeats):
    import keras_dropout as kd

    results = {}
    with kd.sampling(seed=0):
        for backward in (False, True):
            _, functions = jax_callables(shape, backward)
            results[_key("jax-jit", backward)] = time_interleaved(functions, repeats)
    return results


# ----------------------------------------------------------------------------- driver


def _key(mode, backward):
    return f"{mode} {'fwd+bwd' if backward else 'fwd'}"


def worker(backend, size, repeats):
    shape = (size // 1024, 1024) if size % 1024 == 0 else (size,)
    results = run_tensorflow(shape, repeats) if backend == "tensorflow" else run_jax(shape, repeats)
    print("RESULT " + json.dumps(results), flush=True)


def run_backend(backend, size, repeats):
    """Runs `worker` in a subprocess with KERAS_BACKEND set; returns its results."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    command = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--size", str(size),
               "--repeats", str(repeats)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{backend} worker failed:\n{completed.stdout}\n{completed.stderr}")


def format_table(results):
    """A Markdown table: median times, and median paired ratios."""
    lines = [
        "| mode | pass | variant | median ms | / x*2 | / keras Dropout |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key, times in results.items():
        mode, direction = key.split(" ")
        for name in VARIANTS:
            versus_keras = f"{median_ratio(times, name, 'keras Dropout'):.2f}" if name.startswith("ours") else ""
            lines.append(
                f"| {mode} | {direction} | {name} | {median_time(times, name) * 1e3:.1f} | "
                f"{median_ratio(times, name, 'x*2'):.2f} | {versus_keras} |"
            )
    return "\n".join(lines)


def check_goals(results):
    """(goal, measured ratio, met) for each goal in `GOALS`."""
    checks = []
    for mode in ("tf-xla", "jax-jit"):
        for direction, backward in (("fwd", False), ("fwd+bwd", True)):
            if _key(mode, backward) in results:
                ratio = median_ratio(results[_key(mode, backward)], "ours sampling", "x*2")
                checks.append((f"{mode} {direction}: ours sampling <= 1.5x x*2", ratio, ratio <= 1.5))
    for direction, backward in (("fwd", False), ("fwd+bwd", True)):
        if _key("tf-graph", backward) in results:
            for name in ("ours training", "ours sampling"):
                ratio = median_ratio(results[_key("tf-graph", backward)], name, "keras Dropout")
                checks.append((f"tf-graph {direction}: {name} <= 0.8x keras Dropout", ratio, ratio <= 0.8))
    return checks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=2**24, help="elements (int or 2**k); default 2**24")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds per mode (median taken)")
    parser.add_argument("--backends", default="tensorflow,jax", help="comma-separated: tensorflow,jax")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.size, args.repeats)
        return
    results = {}
    for backend in args.backends.split(","):
        print(f"running {backend} ...", file=sys.stderr, flush=True)
        results.update(run_backend(backend.strip(), args.size, args.repeats))
    print(f"MCDropout(rate={RATE}) on {args.size} float32, {args.repeats} interleaved rounds, "
          f"{os.cpu_count()} CPU(s)\n")
    print(format_table(results))
    print("\n" + GOALS + "\n")
    for goal, measured, met in check_goals(results):
        print(f"- {goal}: {measured:.2f} {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
