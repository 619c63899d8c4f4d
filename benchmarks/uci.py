"""Reproduces Table 1 of Gal & Ghahramani (2016): MC dropout on nine UCI data sets.

Protocol (DESIGN.md section 7): inputs z-scored with the training split's
mean/std (std 0 -> 1), y z-scored for training; input dropout, one hidden
layer of 50 ReLU units (100 for Protein), dropout, linear output; Adam,
batch 32, MSE; 10 x n_epochs.txt epochs (400, Protein 200); L2 on kernels
`l**2 (1 - p) / (2 N tau)`; the paper's fixed (p, tau, l) per data set;
T = 10,000 MC samples; test RMSE and test log-likelihood (Gal's eq. 8) on
the original target scale.

Speed: the splits of a data set are trained side by side as one model whose
weights carry a split axis (`EinsumDense "bsd,sdh->bsh"`): split s only ever
sees split s's rows and weights, Adam is per-parameter and the loss is the
sum of per-split losses, so each split is trained exactly as if alone, with
20x fewer optimizer steps. Dropout is `kd.layers.MCDropout`, predictions come
from `kd.predict_mc`, the log-likelihood from
`kd.metrics.gaussian_mixture_log_likelihood`.

`--heteroscedastic` also trains, on the same splits, the same network with a
learned noise: a mean and a softplus variance per split (a stock two-output
model read through `predict_mc(..., variance_output="variance",
variance_kind="variance")`), trained with `kd.losses.gaussian_nll` (same
epochs, dropout and weight decay), and reports its RMSE and test LL (the
mixture of the samples' predicted Gaussians) beside the fixed-tau protocol.

Usage:
    python benchmarks/uci.py --data-dir ../shared/data/uci
    python benchmarks/uci.py --datasets yacht,energy,concrete --splits 5
    python benchmarks/uci.py --heteroscedastic --splits 5
"""

import argparse
import math
import os
import time

import numpy as np

import keras
import keras_dropout as kd

# name -> (folder, p, tau, prior length-scale l, paper RMSE, SE, paper LL, SE)
PAPER = {
    "boston": ("bostonHousing", 0.05, 0.1597, 1e-2, 2.97, 0.19, -2.46, 0.06),
    "concrete": ("concrete", 0.01, 0.05573, 1e-2, 5.23, 0.12, -3.04, 0.02),
    "energy": ("energy", 0.05, 0.4271, 1e-2, 1.66, 0.04, -1.99, 0.02),
    "kin8nm": ("kin8nm", 0.05, 192.48, 1e-2, 0.10, 0.00, 0.95, 0.01),
    "naval": ("naval-propulsion-plant", 0.05, 42173.5, 1.0, 0.01, 0.00, 3.80, 0.01),
    "power": ("power-plant", 0.005, 0.08711, 1e-2, 4.02, 0.04, -2.80, 0.01),
    "protein": ("protein-tertiary-structure", 0.005, 0.06444, 1e-2, 4.36, 0.01, -2.89, 0.00),
    "wine": ("wine-quality-red", 0.05, 2.9583, 1e-2, 0.62, 0.01, -0.93, 0.01),
    "yacht": ("yacht", 0.01, 0.5419, 1e-1, 1.11, 0.09, -1.55, 0.03),
}


def _read_ints(path):
    return np.loadtxt(path, dtype=np.int64, ndmin=1)


def load_splits(folder, num_splits):
    """Returns the data set's (x_train, y_train, x_test, y_test) per split."""
    data = np.loadtxt(os.path.join(folder, "data.txt"))
    features = _read_ints(os.path.join(folder, "index_features.txt"))
    target = int(_read_ints(os.path.join(folder, "index_target.txt"))[0])
    available = int(np.loadtxt(os.path.join(folder, "n_splits.txt")))
    splits = []
    for k in range(min(num_splits, available)):
        train = _read_ints(os.path.join(folder, f"index_train_{k}.txt"))
        test = _read_ints(os.path.join(folder, f"index_test_{k}.txt"))
        splits.append(
            (data[train][:, features], data[train, target], data[test][:, features], data[test, target])
        )
    return splits


def _standardise(train, other):
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    return (train - mean) / std, (other - mean) / std, mean, std


def stack_splits(splits):
    """Normalises each split and stacks them on axis 1: (rows, splits, ...)."""
    rows_train = min(len(s[0]) for s in splits)
    rows_test = min(len(s[2]) for s in splits)
    x_train, y_train, x_test, y_test, y_stats = [], [], [], [], []
    for xa, ya, xb, yb in splits:
        xa_n, xb_n, _, _ = _standardise(xa, xb)
        ya_n, _, y_mean, y_std = _standardise(ya, yb)
        x_train.append(xa_n[:rows_train])
        y_train.append(ya_n[:rows_train])
        x_test.append(xb_n[:rows_test])
        y_test.append(yb[:rows_test])
        y_stats.append((y_mean, y_std))
    stack = lambda arrays: np.stack(arrays, axis=1).astype("float32")
    return stack(x_train), stack(y_train)[..., None], stack(x_test), np.stack(y_test, axis=1), y_stats


def _glorot_per_split(fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit)


def build_model(num_splits, num_features, num_hidden, rate, weight_decay, heteroscedastic=False):
    """Gal's network, one independent copy per split along axis 1.

    `heteroscedastic=True`: two outputs per split, returned as the training
    model (`(rows, splits, 2)`: mean, variance) and the two-output model
    `{"mean", "variance"}` that `predict_mc` reads with `variance_output`.
    """
    inputs = keras.Input((num_splits, num_features))
    h = kd.layers.MCDropout(rate)(inputs)
    h = keras.layers.EinsumDense(
        "bsd,sdh->bsh",
        output_shape=(num_splits, num_hidden),
        bias_axes="sh",
        activation="relu",
        kernel_initializer=_glorot_per_split(num_features, num_hidden),
        kernel_regularizer=keras.regularizers.L2(weight_decay),
    )(h)
    h = kd.layers.MCDropout(rate)(h)
    units = 2 if heteroscedastic else 1
    outputs = keras.layers.EinsumDense(
        "bsh,sho->bso",
        output_shape=(num_splits, units),
        bias_axes="so",
        kernel_initializer=_glorot_per_split(num_hidden, units),
        kernel_regularizer=keras.regularizers.L2(weight_decay),
    )(h)
    if not heteroscedastic:
        return keras.Model(inputs, outputs)
    mean = outputs[..., :1]
    variance = keras.ops.softplus(outputs[..., 1:]) + 1e-6
    training = keras.Model(inputs, keras.ops.concatenate([mean, variance], axis=-1))
    return training, keras.Model(inputs, {"mean": mean, "variance": variance})


def _sum_of_split_mse(y_true, y_pred):
    # Sum over splits, mean over rows: each split's gradient is what it
    # would be if it were trained alone.
    return keras.ops.sum(keras.ops.mean(keras.ops.square(y_true - y_pred), axis=0))


def _sum_of_split_nll(y_true, y_pred):
    return keras.ops.sum(keras.ops.mean(kd.losses.gaussian_nll(y_true, y_pred), axis=0))


def _epochs_as_one_stream(x, y, epochs, seed):
    """`epochs` reshuffled passes in batches of 32, as one tf.data stream.

    Identical batches to `fit(epochs=epochs, batch_size=32, shuffle=True)`
    (a fresh permutation per epoch, a short last batch), without Keras'
    per-epoch overhead, which dominates on these small data sets.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(32).repeat(epochs).prefetch(tf.data.AUTOTUNE)


def train_dataset(name, data_dir, num_splits, epochs_scale, seed, heteroscedastic=False):
    """Trains Gal's network on the splits of a data set (side by side).

    Returns:
        `(model, x_test, y_test, y_stats, tau, epochs)`: the trained model, the
        stacked test inputs `(rows, splits, features)` and targets `(rows,
        splits)`, each split's `(y_mean, y_std)`, the paper's tau, the epochs.
    """
    folder, rate, tau, lengthscale = PAPER[name][:4]
    folder = os.path.join(data_dir, folder)
    splits = load_splits(folder, num_splits)
    num_hidden = int(np.loadtxt(os.path.join(folder, "n_hidden.txt")))
    epochs = int(round(10 * int(np.loadtxt(os.path.join(folder, "n_epochs.txt"))) * epochs_scale))
    x_train, y_train, x_test, y_test, y_stats = stack_splits(splits)
    n_train = x_train.shape[0]
    weight_decay = lengthscale**2 * (1 - rate) / (2.0 * n_train * tau)

    keras.utils.set_random_seed(seed)
    model = build_model(len(splits), x_train.shape[-1], num_hidden, rate, weight_decay, heteroscedastic)
    training, loss = model, _sum_of_split_mse
    if heteroscedastic:
        (training, model), loss = model, _sum_of_split_nll
    training.compile(optimizer="adam", loss=loss, steps_per_execution=64, jit_compile=True)
    training.fit(_epochs_as_one_stream(x_train, y_train, epochs, seed), shuffle=False, verbose=0)
    return model, x_test, y_test, y_stats, tau, epochs


def run_dataset(name, data_dir, num_splits, num_mc_samples, epochs_scale, seed):
    model, x_test, y_test, y_stats, tau, epochs = train_dataset(name, data_dir, num_splits, epochs_scale, seed)
    prediction = kd.predict_mc(
        model, x_test, num_samples=num_mc_samples, seed=seed, return_samples=True, verbose=0
    )
    rmses, lls = [], []
    for s, (y_mean, y_std) in enumerate(y_stats):
        samples = prediction.samples[:, :, s, 0] * y_std + y_mean  # (rows, T)
        mc_mean = samples.mean(axis=1)
        rmses.append(float(np.sqrt(np.mean((y_test[:, s] - mc_mean) ** 2))))
        ll = kd.metrics.gaussian_mixture_log_likelihood(y_test[:, s], samples, tau)
        lls.append(float(np.mean(ll)))
    return np.array(rmses), np.array(lls), epochs


def run_heteroscedastic(name, data_dir, num_splits, num_mc_samples, epochs_scale, seed):
    """RMSE and test LL per split of the learned-noise network."""
    model, x_test, y_test, y_stats, _, _ = train_dataset(
        name, data_dir, num_splits, epochs_scale, seed, heteroscedastic=True
    )
    prediction = kd.predict_mc(
        model,
        x_test,
        num_samples=num_mc_samples,
        seed=seed,
        return_samples=True,
        verbose=0,
        variance_output="variance",
        variance_kind="variance",
    )
    rmses, lls = [], []
    for s, (y_mean, y_std) in enumerate(y_stats):
        means = prediction.samples[:, :, s, 0] * y_std + y_mean
        variances = prediction.sample_variances[:, :, s, 0] * y_std**2
        rmses.append(float(np.sqrt(np.mean((y_test[:, s] - means.mean(axis=1)) ** 2))))
        ll = kd.metrics.gaussian_mixture_log_likelihood(y_test[:, s], means, variances=variances)
        lls.append(float(np.mean(ll)))
    return np.array(rmses), np.array(lls)


def _mean_se(values):
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean(), se


def verdict(rmse, rmse_se, ll, ll_se, paper):
    """The issue's acceptance test against the paper's numbers."""
    p_rmse, p_rmse_se, p_ll, p_ll_se = paper
    rmse_ok = rmse <= p_rmse + 2 * math.hypot(rmse_se, p_rmse_se)
    ll_ok = ll >= p_ll - max(0.15, 2 * math.hypot(ll_se, p_ll_se))
    return rmse_ok, ll_ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "uci"))
    parser.add_argument("--datasets", default=",".join(PAPER), help="comma-separated: " + ",".join(PAPER))
    parser.add_argument("--splits", type=int, default=20, help="at most this many splits per data set")
    parser.add_argument("--samples", type=int, default=10_000, help="MC samples T")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply the protocol's epochs (for smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="uci_results.md")
    parser.add_argument(
        "--heteroscedastic",
        action="store_true",
        help="also train a learned-noise (mean + variance) network and report its RMSE and LL beside the fixed tau",
    )
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PAPER]
    if unknown:
        parser.error(f"unknown data sets {unknown}; choose from {list(PAPER)}")

    header = (
        "| data set | splits | epochs | RMSE (ours) | RMSE (paper) | LL (ours) | LL (paper) | RMSE ok | LL ok | time |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    if args.heteroscedastic:
        header = (
            "| data set | splits | epochs | RMSE fixed tau | LL fixed tau | RMSE learned noise | LL learned noise "
            "| LL difference | LL (paper) | time |\n|---|---|---|---|---|---|---|---|---|---|"
        )
    rows = []
    print(header, flush=True)
    for name in names:
        start = time.time()
        rmses, lls, epochs = run_dataset(name, args.data_dir, args.splits, args.samples, args.epochs_scale, args.seed)
        rmse, rmse_se = _mean_se(rmses)
        ll, ll_se = _mean_se(lls)
        paper = PAPER[name][4:]
        rmse_ok, ll_ok = verdict(rmse, rmse_se, ll, ll_se, paper)
        if args.heteroscedastic:
            h_rmses, h_lls = run_heteroscedastic(
                name, args.data_dir, args.splits, args.samples, args.epochs_scale, args.seed
            )
            h_rmse, h_rmse_se = _mean_se(h_rmses)
            h_ll, h_ll_se = _mean_se(h_lls)
            difference, difference_se = _mean_se(h_lls - lls)  # paired: same splits
            row = (
                f"| {name} | {len(rmses)} | {epochs} | {rmse:.3f} ± {rmse_se:.3f} | {ll:.3f} ± {ll_se:.3f} "
                f"| {h_rmse:.3f} ± {h_rmse_se:.3f} | {h_ll:.3f} ± {h_ll_se:.3f} "
                f"| {difference:+.3f} ± {difference_se:.3f} | {paper[2]:.2f} ± {paper[3]:.2f} "
                f"| {time.time() - start:.0f} s |"
            )
            rows.append(row)
            print(row, flush=True)
            continue
        row = (
            f"| {name} | {len(rmses)} | {epochs} | {rmse:.3f} ± {rmse_se:.3f} | {paper[0]:.2f} ± {paper[1]:.2f} "
            f"| {ll:.3f} ± {ll_se:.3f} | {paper[2]:.2f} ± {paper[3]:.2f} | {'yes' if rmse_ok else 'NO'} "
            f"| {'yes' if ll_ok else 'NO'} | {time.time() - start:.0f} s |"
        )
        rows.append(row)
        print(row, flush=True)
    with open(args.output, "w") as handle:
        handle.write(
            "MC dropout on UCI regression (Gal & Ghahramani 2016, Table 1 protocol"
            + ("; beside it the same network with a learned noise variance, trained by Gaussian NLL" if args.heteroscedastic else "")
            + "). Mean ± standard error (ddof=1) over splits; T = "
            f"{args.samples} samples.\n\n{header}\n" + "\n".join(rows) + "\n"
        )
    print(f"table written to {args.output}")


if __name__ == "__main__":
    main()
