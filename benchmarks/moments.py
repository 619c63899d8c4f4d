"""`kd.predict_moments` beside `kd.predict_mc`: accuracy on UCI, and cost.

Two parts (`--parts uci,cost`):

- **uci**: on each data set, Gal & Ghahramani's network is trained exactly as `uci.py` trains it
  (its functions), then the same trained model is evaluated with `predict_mc` (T = 10,000,
  the log-likelihood of Gal's eq. 8, a mixture of the samples with precision tau) and with
  `predict_moments` (one pass; a Gaussian with the propagated variance + 1/tau). Test RMSE and
  log-likelihood on the original target scale, mean over splits; goal: LL within 0.1 nats of
  MC's on at least 7 of 9 data sets.
- **cost**: side by side in one run, interleaved rounds, medians: one deterministic
  `model.predict`, `predict_moments` and `predict_mc` with S = 100, on `bench_mc.py`'s MLP
  (784-512x3-10, Dropout(0.2) after every hidden layer) and its head-dropout CNN; goal:
  `predict_moments` <= 2.5x one `model.predict`.

Usage (from the repository root):
    python benchmarks/moments.py --data-dir ../shared/data/uci
    python benchmarks/moments.py --parts uci --datasets yacht,energy --splits 5
    python benchmarks/moments.py --parts cost --rounds 5
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import bench_mc  # noqa: E402
import keras_dropout as kd  # noqa: E402
import uci  # noqa: E402


def gaussian_log_likelihood(y, mean, variance):
    return -0.5 * np.log(2 * np.pi * variance) - 0.5 * (y - mean) ** 2 / variance


def uci_row(name, args):
    model, x_test, y_test, y_stats, tau, _ = uci.train_dataset(name, args.data_dir, args.splits, args.epochs_scale, args.seed)
    mc = kd.predict_mc(model, x_test, num_samples=args.samples, seed=args.seed, return_samples=True, verbose=0)
    moments = kd.predict_moments(model, x_test)
    diagonal = kd.predict_moments(model, x_test, covariance="diagonal")
    results = {key: [] for key in ("mc_rmse", "mc_ll", "mo_rmse", "mo_ll", "diag_ll", "spearman")}
    for s, (y_mean, y_std) in enumerate(y_stats):
        y = y_test[:, s]
        samples = mc.samples[:, :, s, 0] * y_std + y_mean
        results["mc_rmse"].append(np.sqrt(np.mean((y - samples.mean(axis=1)) ** 2)))
        results["mc_ll"].append(np.mean(kd.metrics.gaussian_mixture_log_likelihood(y, samples, tau)))
        mean = moments.mean[:, s, 0] * y_std + y_mean
        variance = moments.variance[:, s, 0] * y_std**2 + 1.0 / tau
        results["mo_rmse"].append(np.sqrt(np.mean((y - mean) ** 2)))
        results["mo_ll"].append(np.mean(gaussian_log_likelihood(y, mean, variance)))
        diagonal_mean = diagonal.mean[:, s, 0] * y_std + y_mean
        diagonal_variance = diagonal.variance[:, s, 0] * y_std**2 + 1.0 / tau
        results["diag_ll"].append(np.mean(gaussian_log_likelihood(y, diagonal_mean, diagonal_variance)))
        results["spearman"].append(_spearman(moments.variance[:, s, 0], mc.variance[:, s, 0]))
    row = {key: float(np.mean(values)) for key, values in results.items()}
    row.update(name=name, splits=len(y_stats))
    return row


def _spearman(a, b):
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def run_uci(args):
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    print(
        "| data set | splits | RMSE MC | RMSE moments | LL MC (T=%d) | LL moments | LL gap | within 0.1 "
        "| variance rank corr. | LL moments, diagonal |" % args.samples
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    within = 0
    for name in names:
        row = uci_row(name, args)
        gap = row["mo_ll"] - row["mc_ll"]
        within += abs(gap) <= 0.1
        print(
            f"| {name} | {row['splits']} | {row['mc_rmse']:.3f} | {row['mo_rmse']:.3f} | {row['mc_ll']:.3f} "
            f"| {row['mo_ll']:.3f} | {gap:+.3f} | {'yes' if abs(gap) <= 0.1 else 'NO'} | {row['spearman']:.3f} "
            f"| {row['diag_ll']:.3f} |",
            flush=True,
        )
    print(f"\nLL within 0.1 nats of MC's on {within} of {len(names)} data sets (goal: 7 of 9).")


def run_cost(args):
    import keras

    print("\n| model | rows | model.predict | predict_moments | predict_mc S=100 | moments / predict | MC / predict |")
    print("|---|---|---|---|---|---|---|")
    for label, build, shape, rows in (
        ("MLP 784-512x3-10, Dropout(0.2) after every hidden layer", bench_mc.build_mlp, (784,), 1024),
        ("CNN, dropout in the classifier head only", bench_mc.build_cnn, (32, 32, 3), 256),
    ):
        model = build()
        x = np.random.default_rng(0).normal(size=(rows,) + shape).astype("float32")
        calls = {
            "predict": lambda: model.predict(x, batch_size=rows, verbose=0),
            "moments": lambda: kd.predict_moments(model, x, batch_size=rows),
            "mc": lambda: kd.predict_mc(model, x, 100, seed=0, verbose=0, jit_compile=False),
        }
        for call in calls.values():
            call()  # tracing and compiling, untimed
        seconds = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - start)
        median = {name: statistics.median(values) for name, values in seconds.items()}
        print(
            f"| {label} | {rows} | {median['predict'] * 1e3:.1f} ms | {median['moments'] * 1e3:.1f} ms "
            f"| {median['mc'] * 1e3:.1f} ms | {median['moments'] / median['predict']:.2f}x "
            f"| {median['mc'] / median['predict']:.1f}x |",
            flush=True,
        )
        keras.backend.clear_session()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="uci,cost")
    parser.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "uci"))
    parser.add_argument("--datasets", default=",".join(uci.PAPER))
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--epochs-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if "uci" in parts:
        run_uci(args)
    if "cost" in parts:
        run_cost(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
