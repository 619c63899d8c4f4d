"""1-D regression with MC dropout: the model is unsure where it has seen no data.

Trains a small MLP with `kd.layers.MCDropout` on y = x sin(x) + noise, sampled
on two separated intervals, then calls `kd.predict_mc` on a grid that reaches
well beyond them. Prints the mean predictive standard deviation on the
training intervals, in the gap between them and outside the training range,
and saves `regression_1d.png`: training points, predictive mean and the 95%
interval of the MC samples, beside the 95% band `kd.predict_moments` gives in
one pass (moment propagation), with the rank correlation of the two per-point
variances.

The gap is the interesting case: MC dropout grows its uncertainty as it
extrapolates, but it is known to stay overconfident *between* clusters of
training data (Foong et al. 2019, "In-Between" Uncertainty in Bayesian
Neural Networks), so do not expect much there.

Run: python examples/regression_1d.py [--output-dir DIR] [--quick]
(needs matplotlib: pip install -e ".[plot]")
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")  # no display needed; we only write a PNG
import matplotlib.pyplot as plt
import numpy as np
import keras

import keras_dropout as kd

TRAIN_INTERVALS = [(-6.0, -2.0), (1.0, 5.0)]
GRID = (-15.0, 15.0)


def target(x):
    return x * np.sin(x)


def make_data(rng, n):
    parts = [rng.uniform(low, high, size=(n // 2, 1)) for low, high in TRAIN_INTERVALS]
    x = np.concatenate(parts).astype("float32")
    y = (target(x) + 0.3 * rng.normal(size=x.shape)).astype("float32")
    return x, y


def region_masks(x):
    """Boolean masks: on a training interval, in the gap, outside the range."""
    on_data = np.any([(low <= x) & (x <= high) for low, high in TRAIN_INTERVALS], axis=0)
    outside = (x < TRAIN_INTERVALS[0][0]) | (x > TRAIN_INTERVALS[-1][1])
    return on_data, ~on_data & ~outside, outside


def make_model(width=128, rate=0.2):
    return keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(width, activation="relu"),
            kd.layers.MCDropout(rate),
            keras.layers.Dense(width, activation="relu"),
            kd.layers.MCDropout(rate),
            keras.layers.Dense(1),
        ]
    )


def spearman(a, b):
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def plot(path, x_train, y_train, x_grid, mean, lower, upper, moments_band):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for low, high in TRAIN_INTERVALS:
        ax.axvspan(low, high, color="0.93", zorder=0)
    ax.fill_between(x_grid, lower, upper, color="tab:blue", alpha=0.25, label="95% interval (MC, predict_mc)")
    for bound, label in zip(moments_band, ("95% band (predict_moments, one pass)", None)):
        ax.plot(x_grid, bound, color="tab:orange", lw=1.2, ls="--", label=label)
    ax.plot(x_grid, target(x_grid), color="0.4", ls="--", lw=1, label="x sin(x)")
    ax.plot(x_grid, mean, color="tab:blue", lw=2, label="predictive mean")
    ax.scatter(x_train, y_train, s=6, color="black", label="training data", zorder=3)
    ax.set_xlim(*GRID)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("MC dropout regression (shaded: training intervals)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=".", help="where to write regression_1d.png")
    parser.add_argument("--quick", action="store_true", help="fewer points and epochs")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(rng, 256 if args.quick else 512)
    epochs = 200 if args.quick else 300

    model = make_model()
    # Several steps per compiled call: these batches are tiny, so Python
    # overhead, not arithmetic, would dominate training time.
    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="mse", steps_per_execution=8)
    print(f"training on {len(x_train)} points from {TRAIN_INTERVALS}, {epochs} epochs ...")
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)

    x_grid = np.linspace(*GRID, 601, dtype="float32")
    result = kd.predict_mc(
        model, x_grid[:, None], num_samples=2000, seed=0, interval_levels=(0.95,), verbose=0
    )
    mean, stddev = result.mean[:, 0], result.stddev[:, 0]
    lower, upper = (bound[:, 0] for bound in result.interval(0.95))

    on_data, gap, outside = (stddev[mask].mean() for mask in region_masks(x_grid))
    print("mean predictive stddev")
    print(f"  inside the training range (on the data): {on_data:.3f}")
    print(f"  in the gap between the two intervals:    {gap:.3f}")
    print(f"  outside the training range:              {outside:.3f}")
    print(f"ratio outside/inside: {outside / on_data:.2f}")

    moments = kd.predict_moments(model, x_grid[:, None])
    moments_band = [bound[:, 0] for bound in moments.interval(0.95)]
    correlation = spearman(moments.variance[:, 0], result.variance[:, 0])
    moments_stddev = moments.stddev[:, 0]
    on_data_moments, _, outside_moments = (moments_stddev[mask].mean() for mask in region_masks(x_grid))
    print("predict_moments (one pass, moment propagation):")
    print(f"  ratio outside/inside: {outside_moments / on_data_moments:.2f}")
    print(f"  median variance / MC variance: {np.median(moments.variance[:, 0] / result.variance[:, 0]):.2f}")
    print(f"  rank correlation of the per-point variance with MC's: {correlation:.3f}")

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "regression_1d.png")
    plot(path, x_train[:, 0], y_train[:, 0], x_grid, mean, lower, upper, moments_band)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
