"""Heteroscedastic 1-D regression: the data's noise and the model's doubt, separately.

The data: y = sin(x) + noise whose standard deviation grows with x
(sigma(x) = 0.05 + 0.1 x), sampled on two intervals with a gap between them.
A small MLP with `kd.layers.MCDropout` ends in `kd.layers.GaussianHead(1)`
(a mean and a variance per input) and is trained with
`kd.losses.GaussianNLL`. `kd.predict_mc` on a grid reaching beyond the data
then splits the predictive variance into

- `aleatoric_variance`: the mean of the predicted variances, the noise the
  model has learned (it should follow sigma(x)**2 where there is data), and
- `epistemic_variance`: the variance of the predicted means over dropout
  samples, the model's own uncertainty (it should grow away from the data).

Prints the rank correlation of the aleatoric variance with the true
sigma(x)**2 on the training intervals, the epistemic standard deviation on the
data, in the gap and outside, the same split by `kd.predict_moments` (one
pass), and saves `heteroscedastic_1d.png`: training points, the mean, the 95%
band of the noise alone and the 95% interval of the full predictive mixture.

Expect the epistemic part to grow clearly outside the data (about 2x) but only
a little in the gap (1.1-1.3x over seeds): MC dropout is known to stay
overconfident between clusters of data (Foong et al. 2019, "In-Between"
Uncertainty in Bayesian Neural Networks).

Run: python examples/heteroscedastic_1d.py [--output-dir DIR] [--quick]
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

TRAIN_INTERVALS = [(0.0, 2.5), (5.5, 8.0)]
GRID = (-3.0, 11.0)


def noise_stddev(x):
    return 0.05 + 0.1 * x


def make_data(rng, n):
    parts = [rng.uniform(low, high, size=(n // 2, 1)) for low, high in TRAIN_INTERVALS]
    x = np.concatenate(parts).astype("float32")
    y = (np.sin(x) + noise_stddev(x) * rng.normal(size=x.shape)).astype("float32")
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
            kd.layers.GaussianHead(1),
        ]
    )


def spearman(a, b):
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def plot(path, x_train, y_train, x_grid, mean, noise_band, total_band):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for low, high in TRAIN_INTERVALS:
        ax.axvspan(low, high, color="0.93", zorder=0)
    ax.fill_between(x_grid, *total_band, color="tab:blue", alpha=0.2, label="95% predictive interval (aleatoric + epistemic)")
    ax.fill_between(x_grid, *noise_band, color="tab:orange", alpha=0.35, label="95% band of the learned noise (aleatoric)")
    ax.plot(x_grid, np.sin(x_grid), color="0.4", ls="--", lw=1, label="sin(x)")
    ax.plot(x_grid, mean, color="tab:blue", lw=2, label="predictive mean")
    ax.scatter(x_train, y_train, s=5, color="black", label="training data", zorder=3)
    ax.set_xlim(*GRID)
    ax.set_ylim(-4, 4)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("GaussianHead + MC dropout (shaded: training intervals)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=".", help="where to write heteroscedastic_1d.png")
    parser.add_argument("--quick", action="store_true", help="fewer points and epochs")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(rng, 4096 if args.quick else 8192)
    epochs = 60

    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=kd.losses.GaussianNLL(), steps_per_execution=8)
    print(f"training on {len(x_train)} points from {TRAIN_INTERVALS}, {epochs} epochs ...")
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)

    x_grid = np.linspace(*GRID, 701, dtype="float32")
    result = kd.predict_mc(model, x_grid[:, None], num_samples=1000, seed=0, verbose=0)
    mean = result.mean[:, 0]
    aleatoric, epistemic = result.aleatoric_variance[:, 0], result.epistemic_variance[:, 0]
    total_band = [bound[:, 0] for bound in result.interval(0.95)]
    noise_band = (mean - 1.96 * np.sqrt(aleatoric), mean + 1.96 * np.sqrt(aleatoric))

    on_data, gap, outside = region_masks(x_grid)
    print("predict_mc (1000 samples):")
    correlation = spearman(aleatoric[on_data], noise_stddev(x_grid[on_data]) ** 2)
    print(f"  rank correlation of aleatoric variance with sigma(x)^2 on the data: {correlation:.3f}")
    learned = np.sqrt(aleatoric[on_data]) / noise_stddev(x_grid[on_data])
    print(f"  median learned noise stddev / true: {np.median(learned):.2f}")
    epistemic_stddev = np.sqrt(epistemic)
    inside, between, beyond = (epistemic_stddev[mask].mean() for mask in (on_data, gap, outside))
    print(f"  epistemic stddev on the data {inside:.3f}, in the gap {between:.3f}, outside {beyond:.3f}")
    print(f"  epistemic ratio gap/inside: {between / inside:.2f}")
    print(f"  epistemic ratio outside/inside: {beyond / inside:.2f}")

    moments = kd.predict_moments(model, x_grid[:, None])
    print("predict_moments (one pass, moment propagation):")
    print(f"  rank correlation of aleatoric variance with MC's: {spearman(moments.aleatoric_variance[:, 0], aleatoric):.3f}")
    print(f"  rank correlation of epistemic variance with MC's: {spearman(moments.epistemic_variance[:, 0], epistemic):.3f}")

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "heteroscedastic_1d.png")
    plot(path, x_train[:, 0], y_train[:, 0], x_grid, mean, noise_band, total_band)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
