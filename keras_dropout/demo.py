"""`keras-dropout demo`: the whole path, from training to served uncertainty.

1. trains a small MC-dropout classifier (with BatchNormalization) on
   generated 2-D data,
2. prints its uncertainty in and far from the data, and its calibration,
3. writes a plot of predictive entropy over the input plane,
4. exports a SavedModel with `serving_default`, `mc`, `mc_sample` and `moments`,
5. starts the embedded TF-Serving-compatible server on free loopback ports,
6. queries the four signatures over REST and gRPC and prints the answers,
7. shuts the server down.
"""

import os
import time

import numpy as np

_CENTRES = np.array([[0.0, 2.0], [-1.8, -1.0], [1.8, -1.0]])


def make_blobs(rng, rows_per_class, spread=0.9):
    """Three overlapping Gaussian classes in the plane."""
    x = np.concatenate([rng.normal(centre, spread, size=(rows_per_class, 2)) for centre in _CENTRES])
    y = np.repeat(np.arange(len(_CENTRES)), rows_per_class)
    order = rng.permutation(len(y))
    return x[order].astype("float32"), y[order]


def build_model():
    import keras

    import keras_dropout as kd

    inputs = keras.Input((2,), name="x")
    h = keras.layers.Dense(64, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = kd.layers.MCDropout(0.2)(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    h = kd.layers.MCDropout(0.2)(h)
    outputs = keras.layers.Dense(len(_CENTRES), activation="softmax", name="probs")(h)
    return keras.Model(inputs, outputs, name="demo")


class _Steps:
    def __init__(self, total):
        self.total, self.done, self.start = total, 0, time.time()

    def __call__(self, title):
        self.done += 1
        print(f"\n[{self.done}/{self.total}] {title}  (t={time.time() - self.start:.0f}s)", flush=True)


def _write_plot(model, x, y, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import keras_dropout as kd

    grid = np.linspace(-7, 7, 80, dtype="float32")
    xx, yy = np.meshgrid(grid, grid)
    plane = np.stack([xx.ravel(), yy.ravel()], axis=1)
    entropy = kd.predict_mc(model, plane, num_samples=50, seed=0, verbose=0).predictive_entropy
    figure, axis = plt.subplots(figsize=(6, 5))
    image = axis.contourf(xx, yy, entropy.reshape(xx.shape), levels=20, cmap="viridis")
    axis.scatter(x[:, 0], x[:, 1], c=y, s=4, cmap="Set1", alpha=0.6)
    figure.colorbar(image, label="predictive entropy (nats)")
    axis.set_title("MC dropout: predictive entropy over the input plane")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def _show(label, outputs):
    parts = []
    for name in sorted(outputs):
        value = np.asarray(outputs[name])
        parts.append(f"{name}={np.array2string(value[0], precision=3, suppress_small=True)}")
    print(f"  {label:<28} " + "  ".join(parts))


def run_demo(output_dir="keras_dropout_demo", epochs=60):
    """Runs the demo; returns 0 on success (the exit code)."""
    import keras

    import keras_dropout as kd
    from keras_dropout.serving.client import Client
    from keras_dropout.serving.server import Server

    step = _Steps(6)
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = make_blobs(rng, 500)
    x_test, y_test = make_blobs(rng, 200)

    step(f"Training a 2x64 MLP with BatchNorm and MC dropout on 3 Gaussian classes ({epochs} epochs)")
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    progress = keras.utils.Progbar(epochs, unit_name="epoch")
    model.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: progress.update(e + 1, [("loss", logs["loss"])]))],
    )

    step("Monte Carlo predictions (100 samples): uncertainty and calibration")
    test = kd.predict_mc(model, x_test, num_samples=100, seed=0, verbose=0)
    far = np.array([[0.0, 0.5], [6.0, 6.0], [-7.0, 5.0], [0.0, -7.0]], "float32")
    far_prediction = kd.predict_mc(model, far, num_samples=100, seed=0, verbose=0)
    accuracy = float(np.mean(test.mean.argmax(axis=1) == y_test))
    print(f"  test accuracy {accuracy:.3f}   ECE {kd.metrics.expected_calibration_error(y_test, test.mean):.3f}"
          f"   NLL {kd.metrics.negative_log_likelihood(y_test, test.mean):.3f}"
          f"   Brier {kd.metrics.brier_score(y_test, test.mean):.3f}")
    print(f"  mean mutual information: test data {test.mutual_information.mean():.3f} nats")
    print(f"  {'point':>14} {'p(class)':>22} {'entropy':>8} {'mutual info':>12}")
    for point, p, h, mi in zip(far, far_prediction.mean, far_prediction.predictive_entropy, far_prediction.mutual_information):
        print(f"  {str(point.tolist()):>14} {np.array2string(p, precision=2):>22} {h:8.3f} {mi:12.3f}")

    step("Plotting predictive entropy over the plane")
    plot_path = os.path.join(output_dir, "demo_uncertainty.png")
    _write_plot(model, x_train, y_train, plot_path)
    print(f"  wrote {plot_path}")

    step("Exporting a SavedModel with serving_default, mc, mc_sample and moments")
    base_path = os.path.abspath(os.path.join(output_dir, "models", "demo"))
    version_path = kd.serving.export(model, base_path, num_samples=64, moments=True)
    problems = kd.serving.check(version_path)
    print(f"  wrote {version_path}; kd.serving.check: {'no problems' if not problems else problems}")

    step("Starting the embedded TF-Serving-compatible server on 127.0.0.1")
    server = Server(model_name="demo", model_base_path=base_path, port=0, rest_api_port=0)
    server.start()
    try:
        print(f"  REST http://127.0.0.1:{server.rest_api_port}   gRPC 127.0.0.1:{server.port}")
        step("Querying the four signatures over REST and gRPC (first row of each answer)")
        query = {"x": far[:2]}
        for transport, client in (
            ("REST", Client(rest_url=f"http://127.0.0.1:{server.rest_api_port}", model_name="demo", transport="rest")),
            ("gRPC", Client(grpc_target=f"127.0.0.1:{server.port}", model_name="demo", transport="grpc")),
        ):
            with client:
                _show(f"{transport} serving_default", client.predict(query, signature_name="serving_default"))
                _show(f"{transport} mc", client.predict(query, signature_name="mc"))
                sampled = dict(query, num_samples=np.int32(256), seed=np.int64(7))
                _show(f"{transport} mc_sample (S=256)", client.predict(sampled, signature_name="mc_sample"))
                _show(f"{transport} moments (one pass)", client.predict(query, signature_name="moments"))
        print("  (mc_sample with the same seed gives the same answer over both protocols; moments is")
        print("   kd.predict_moments: the same statistics without sampling)")
    finally:
        server.stop()
    print(f"\nDone in {time.time() - step.start:.0f}s. Serve it yourself with:\n"
          f"  keras-dropout serve --model_name=demo --model_base_path={base_path}")
    return 0
