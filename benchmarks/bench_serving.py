"""Serving benchmark: latency and throughput of `keras-dropout serve` under concurrent load.

Exports a small Keras model (Dense -> BatchNormalization -> MCDropout -> Dense) with
`kd.serving.export`, serves it with the embedded server, and measures two things:

1. Load: `--clients` threads each send `--requests` requests, cycling through the signatures
   (`serving_default`, `mc`, `mc_sample`) and four ways of calling them: `kd.serving.Client` over
   gRPC and over REST (columnar), and raw HTTP with `requests` in row format (`instances`) and
   columnar format (`inputs`); `mc_sample`'s scalars always go columnar. Reports p50 / p99
   latency and throughput per signature and transport. This is the load of
   `tests/test_server_load.py`.
2. Side by side: one client alternates an in-process call of the loaded signature
   (`tf.saved_model.load(path).signatures["mc"](x=...)`) with the same call served over gRPC and
   over REST, `--side-by-side` times each, and reports the served / in-process latency ratio.
3. Batching: `--batching-clients` (16) gRPC clients each send `--batching-requests` 1-row `mc`
   requests to a server without and then (alone on the machine) one with `--enable_batching`
   (`--batching_parameters_file`: max_batch_size = the client count, a 5 ms batch timeout, one
   batch thread; both servers admit every client at once). Reports throughput and p50 / p99 of
   both and their ratio. The model of this part is an MC-dropout LSTM that passes its first
   step through beside the dropout path, so every answer's `mean` holds the features sent: each
   client checks that it got exactly its own row back (a row is (client, request, 1, 2)).

The server runs in a subprocess (`keras-dropout serve`, as deployed) unless `--server=thread`,
which runs it in this interpreter, sharing the GIL with the clients. Clients, server and
TensorFlow share the machine's cores: on a small machine the numbers measure contention too.

Usage:
    python benchmarks/bench_serving.py
    python benchmarks/bench_serving.py --clients 16 --requests 500 --rows 8 --server thread
    python benchmarks/bench_serving.py --only-batching --batching-requests 100
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

MODEL = "bench"
FEATURES = 4
SIGNATURES = ("serving_default", "mc", "mc_sample")
TRANSPORTS = ("grpc", "rest", "rows", "columns")
TRANSPORT_NAMES = {
    "grpc": "gRPC (kd.serving.Client)",
    "rest": "REST columnar (kd.serving.Client)",
    "rows": "REST rows (requests)",
    "columns": "REST columnar (requests)",
}


def build_model(seed=1):
    import keras

    import keras_dropout as kd

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,), name="x")
    hidden = keras.layers.Dense(16, activation="relu", name="dense_in")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    hidden = kd.layers.MCDropout(0.3, name="dropout")(hidden)
    outputs = keras.layers.Dense(2, name="y")(hidden)
    return keras.Model(inputs, outputs, name="bench")


# ----------------------------------------------------------------------------- servers


STEPS = 32


def build_passthrough_model(seed=1):
    """An LSTM with input and recurrent dropout over `STEPS` steps, its answer beside a copy of
    the first step's features: the `mean`'s first `FEATURES` columns are that step exactly.

    Sequence models are where merging requests pays on a CPU: a call's cost is the steps' fixed
    overhead, nearly the same for 1 row as for 16.
    """
    import keras

    inputs = keras.Input((STEPS, FEATURES), name="x")
    keras.utils.set_random_seed(seed)
    hidden = keras.layers.LSTM(32, dropout=0.2, recurrent_dropout=0.2, name="lstm")(inputs)
    first_step = keras.layers.Flatten()(keras.layers.Cropping1D((0, STEPS - 1))(inputs))
    outputs = keras.layers.Concatenate(name="y")([first_step, keras.layers.Dense(2)(hidden)])
    return keras.Model(inputs, outputs, name="bench_batching")


def _flags(base_path, extra_flags=()):
    return [
        "--port=0", "--rest_api_port=0", f"--model_name={MODEL}",
        f"--model_base_path={base_path}", "--file_system_poll_wait_seconds=0", *extra_flags,
    ]


class ThreadServer:
    """The embedded server in this interpreter."""

    def __init__(self, base_path, extra_flags=()):
        from keras_dropout.serving.server import add_serve_arguments, server_from_args

        parser = add_serve_arguments(argparse.ArgumentParser())
        self._server = server_from_args(parser.parse_args(_flags(base_path, extra_flags)))
        self._server.start()
        self.rest_url = self._server.rest_url
        self.grpc_target = self._server.grpc_target

    def stop(self):
        self._server.stop(grace=1)


class ProcessServer:
    """`keras-dropout serve` in a subprocess; its addresses read from its start-up lines."""

    def __init__(self, base_path, extra_flags=()):
        command = [
            sys.executable, "-c", "from keras_dropout.cli import main; raise SystemExit(main())",
            "serve", *_flags(base_path, extra_flags),
        ]
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        self.rest_url = self.grpc_target = None
        for line in self._process.stdout:
            found = re.match(r"Running gRPC ModelServer at (\S+)", line)
            if found:
                self.grpc_target = found.group(1)
            found = re.match(r"Exporting HTTP/REST API at:(\S+)", line)
            if found:
                self.rest_url = "http://" + found.group(1)
                break
        if not (self.rest_url and self.grpc_target):
            self._process.wait(timeout=60)
            self._log.seek(0)
            raise RuntimeError(
                "keras-dropout serve did not start:\n" + self._log.read().decode(errors="replace")[-3000:]
            )

    def stop(self):
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


# ----------------------------------------------------------------------------- calls


class Caller:
    """One client: `kd.serving.Client` over gRPC and REST, and raw HTTP with `requests`."""

    def __init__(self, server):
        import requests

        import keras_dropout as kd

        self.grpc = kd.serving.Client(grpc_target=server.grpc_target, model_name=MODEL)
        self.rest = kd.serving.Client(rest_url=server.rest_url, model_name=MODEL)
        self.http = requests.Session()
        self.url = f"{server.rest_url}/v1/models/{MODEL}:predict"

    def close(self):
        self.grpc.close()
        self.rest.close()
        self.http.close()

    def call(self, transport, signature, x, num_samples=8, seed=0):
        inputs = {"x": x}
        if signature == "mc_sample":
            inputs.update(num_samples=np.int32(num_samples), seed=np.int64(seed))
        if transport in ("grpc", "rest"):
            client = self.grpc if transport == "grpc" else self.rest
            return client.predict(inputs, signature_name=signature)
        if transport == "rows" and signature != "mc_sample":
            body = {"signature_name": signature, "instances": x.tolist()}
            key = "predictions"
        else:
            body = {
                "signature_name": signature,
                "inputs": {name: np.asarray(value).tolist() for name, value in inputs.items()},
            }
            key = "outputs"
        response = self.http.post(self.url, json=body, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return response.json()[key]


def run_load(server, clients, requests_per_client, rows, num_samples):
    """Every request's (signature, transport, seconds, error); and the wall time."""
    records = []

    def client_loop(client):
        caller = Caller(server)
        rng = np.random.default_rng(client)
        try:
            for index in range(requests_per_client):
                transport = TRANSPORTS[(client + index) % len(TRANSPORTS)]
                signature = SIGNATURES[index % len(SIGNATURES)]
                x = rng.normal(size=(rows, FEATURES)).astype("float32")
                error = None
                started = time.perf_counter()
                try:
                    caller.call(transport, signature, x, num_samples, seed=index)
                except Exception as failure:  # counted, never stops the client
                    error = f"{type(failure).__name__}: {failure}"
                records.append((signature, transport, time.perf_counter() - started, error))
        finally:
            caller.close()

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records, time.perf_counter() - started


def side_by_side(server, path, calls, rows):
    """Latencies (s) of in-process `loaded.signatures["mc"]` and of the served `mc`, alternated."""
    import tensorflow as tf

    mc = tf.saved_model.load(path).signatures["mc"]
    caller = Caller(server)
    rng = np.random.default_rng(123)
    times = {"in-process": [], "grpc": [], "rest": []}
    try:
        for index in range(calls + 10):  # the first 10 of each warm up
            x = rng.normal(size=(rows, FEATURES)).astype("float32")
            started = time.perf_counter()
            mc(x=tf.constant(x))["mean"].numpy()
            in_process = time.perf_counter() - started
            served = {}
            for transport in ("grpc", "rest"):
                started = time.perf_counter()
                caller.call(transport, "mc", x)
                served[transport] = time.perf_counter() - started
            if index >= 10:
                times["in-process"].append(in_process)
                for transport, seconds in served.items():
                    times[transport].append(seconds)
    finally:
        caller.close()
    return times


def run_batching_load(server, clients, requests_per_client):
    """Clients x N one-row `mc` requests over gRPC: (latencies, wrong answers, wall time).

    Every client connects and warms up, then all start at once (a barrier; the wall time runs
    from there) and check each answer's passthrough columns.
    """
    import keras_dropout as kd

    latencies, wrong, lock = [], [], threading.Lock()
    start = []
    barrier = threading.Barrier(clients, action=lambda: start.append(time.perf_counter()))

    def client_loop(client):
        grpc_client = kd.serving.Client(grpc_target=server.grpc_target, model_name=MODEL)
        try:
            grpc_client.predict({"x": np.zeros((1, STEPS, FEATURES), "float32")}, signature_name="mc")
            barrier.wait()
            for index in range(requests_per_client):
                row = np.array([[client, index, 1, 2]], "float32")
                sequence = np.repeat(row[:, None, :], STEPS, axis=1)
                started = time.perf_counter()
                try:
                    outputs = grpc_client.predict({"x": sequence}, signature_name="mc")
                    own = np.array_equal(outputs["mean"][:, :FEATURES], row)
                    error = None if own else f"client {client} got {outputs['mean'][0, :FEATURES]}"
                except Exception as failure:  # counted, never stops the client
                    error = f"{type(failure).__name__}: {failure}"
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if error:
                        wrong.append(error)
        finally:
            grpc_client.close()

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, wrong, time.perf_counter() - start[0]


def batching_comparison(workdir, args, server_class):
    """Throughput of 1-row `mc` requests without and with `--enable_batching`, one after the other."""
    import keras_dropout as kd

    path = kd.serving.export(
        build_passthrough_model(), os.path.join(workdir, "batching", MODEL),
        num_samples=args.num_samples, batching=True,
    )
    parameters = os.path.join(workdir, "batching_parameters.txt")
    with open(parameters, "w") as handle:
        handle.write(
            f"max_batch_size {{ value: {args.batching_clients} }}\n"
            "batch_timeout_micros { value: 5000 }\n"
            "num_batch_threads { value: 1 }\n"
            "max_enqueued_batches { value: 1000 }\n"
        )
    results = {}
    # Every client's request must be admitted at once for batches to fill.
    admitted = f"--max_concurrent_requests={args.batching_clients}"
    for name, flags in (
        ("without batching", (admitted,)),
        (
            "--enable_batching",
            (admitted, "--enable_batching", f"--batching_parameters_file={parameters}"),
        ),
    ):
        server = server_class(os.path.dirname(path), flags)
        try:
            results[name] = run_batching_load(server, args.batching_clients, args.batching_requests)
        finally:
            server.stop()
    return results


# ----------------------------------------------------------------------------- report


def print_batching(results, args):
    print(
        f"\nBatching: {args.batching_clients} gRPC clients x {args.batching_requests} one-row mc "
        f"requests (num_samples={args.num_samples}), server={args.server}\n"
    )
    header = f"{'server':<20} {'requests':>8} {'wrong':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}"
    print(header)
    print("-" * len(header))
    throughput = {}
    for name, (latencies, wrong, elapsed) in results.items():
        seconds = np.asarray(latencies)
        throughput[name] = len(latencies) / elapsed
        print(
            f"{name:<20} {len(latencies):>8} {len(wrong):>6} {_ms(np.percentile(seconds, 50))} "
            f"{_ms(np.percentile(seconds, 99))} {throughput[name]:8.1f}"
        )
    ratio = throughput["--enable_batching"] / throughput["without batching"]
    print(f"\nthroughput with / without batching: {ratio:.2f}x (goal >= 3x)")
    for name, (_, wrong, _) in results.items():
        if wrong:
            print(f"{name}: {len(wrong)} wrong or failed answers; first: {wrong[0]}")
    return ratio


def _ms(seconds):
    return f"{1000 * seconds:8.2f}"


def print_load(records, elapsed, args):
    print(
        f"\nLoad: {args.clients} clients x {args.requests} requests, {args.rows} row(s) each, "
        f"mc num_samples={args.num_samples}, server={args.server}: {len(records)} requests in "
        f"{elapsed:.1f} s\n"
    )
    header = f"{'signature':<16} {'transport':<34} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}"
    print(header)
    print("-" * len(header))
    groups = [(s, t) for s in SIGNATURES for t in TRANSPORTS] + [("all", None)]
    for signature, transport in groups:
        chosen = [
            r for r in records
            if (signature == "all" or r[0] == signature) and (transport is None or r[1] == transport)
        ]
        if not chosen:
            continue
        seconds = np.array([r[2] for r in chosen])
        errors = sum(1 for r in chosen if r[3])
        name = "" if transport is None else TRANSPORT_NAMES[transport]
        print(
            f"{signature:<16} {name:<34} {len(chosen):>8} {errors:>6} "
            f"{_ms(np.percentile(seconds, 50))} {_ms(np.percentile(seconds, 99))} "
            f"{len(chosen) / elapsed:7.1f}"
        )
    print("(REST rows sends mc_sample columnar: row format cannot carry its scalar inputs.)")
    failures = [r[3] for r in records if r[3]]
    if failures:
        print(f"\n{len(failures)} failed requests; first: {failures[0]}")
    return records


def print_side_by_side(times, records, args):
    in_process = np.median(times["in-process"])
    print(
        f"\nmc latency side by side: one client, {args.side_by_side} calls each, {args.rows} row(s), "
        f"num_samples={args.num_samples}\n"
    )
    header = f"{'call':<46} {'p50 ms':>8} {'p99 ms':>8} {'p50 / in-process':>17}"
    print(header)
    print("-" * len(header))
    rows = [
        ('in-process loaded.signatures["mc"](x=...)', times["in-process"]),
        ("served, gRPC (kd.serving.Client)", times["grpc"]),
        ("served, REST (kd.serving.Client)", times["rest"]),
    ]
    for transport in ("grpc", "rest"):
        under_load = [r[2] for r in records if r[0] == "mc" and r[1] == transport and not r[3]]
        if under_load:
            rows.append((f"served under the load above, {transport}", under_load))
    for name, seconds in rows:
        seconds = np.asarray(seconds)
        print(
            f"{name:<46} {_ms(np.percentile(seconds, 50))} {_ms(np.percentile(seconds, 99))} "
            f"{np.median(seconds) / in_process:17.1f}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=250, help="requests per client (default 250)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (default 1)")
    parser.add_argument(
        "--num-samples", type=int, default=16,
        help="samples of the exported mc signature, and mc_sample's num_samples (default 16)",
    )
    parser.add_argument(
        "--side-by-side", type=int, default=200,
        help="calls of each kind in the side-by-side mc comparison; 0 skips it (default 200)",
    )
    parser.add_argument(
        "--server", choices=("process", "thread"), default="process",
        help="run the server in a subprocess (default) or in this interpreter",
    )
    parser.add_argument(
        "--batching-clients", type=int, default=16,
        help="concurrent clients of the batching comparison (default 16)",
    )
    parser.add_argument(
        "--batching-requests", type=int, default=60,
        help="one-row mc requests per client in the batching comparison; 0 skips it (default 60)",
    )
    parser.add_argument(
        "--only-batching", action="store_true", help="run only the batching comparison"
    )
    args = parser.parse_args(argv)
    for name in ("clients", "requests", "rows", "num_samples", "batching_clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    import keras_dropout as kd

    workdir = tempfile.mkdtemp(prefix="bench-serving-")
    server_class = ProcessServer if args.server == "process" else ThreadServer
    server = None
    try:
        if args.only_batching:
            results = batching_comparison(workdir, args, server_class)
            print_batching(results, args)
            return 1 if any(wrong for _, wrong, _ in results.values()) else 0
        path = kd.serving.export(
            build_model(), os.path.join(workdir, MODEL), num_samples=args.num_samples,
            max_samples=max(1024, args.num_samples),
        )
        server = server_class(os.path.dirname(path))
        records, elapsed = run_load(server, args.clients, args.requests, args.rows, args.num_samples)
        print_load(records, elapsed, args)
        if args.side_by_side > 0:
            print_side_by_side(side_by_side(server, path, args.side_by_side, args.rows), records, args)
        server.stop()
        server = None
        failed = any(r[3] for r in records)
        if args.batching_requests > 0:
            results = batching_comparison(workdir, args, server_class)
            print_batching(results, args)
            failed = failed or any(wrong for _, wrong, _ in results.values())
        return 1 if failed else 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
