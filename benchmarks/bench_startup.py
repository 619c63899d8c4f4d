"""Start-up benchmark: what a user waits for before keras-dropout answers.

Each command runs in a fresh Python process, timed from `subprocess.run` to
its exit, in `--repeats` interleaved rounds (the medians of the per-round
ratios to `python -c "import numpy"`, the floor any NumPy-based tool pays):

- `python -c "import numpy"`;
- `keras-dropout --help`, `keras-dropout --version` and an argument error
  (`keras-dropout predict` without its arguments): answered without
  importing TensorFlow;
- `python -c "import keras_dropout"`: lazy, loads neither Keras nor TF;
- `python -c "import keras_dropout as kd; kd.layers"`: the first use of a
  name, which loads Keras and TensorFlow (the cost every TF program pays).

The CLI runs as `python -m keras_dropout.cli`, the entry point's target, so
the interpreter on PATH does not matter. Goal: `--help` <= 4x `import numpy`.

Usage:
    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --repeats 5
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

# name: (arguments, the exit status it must end with)
COMMANDS = {
    'python -c "import numpy"': (["-c", "import numpy"], 0),
    "keras-dropout --help": (["-m", "keras_dropout.cli", "--help"], 0),
    "keras-dropout --version": (["-m", "keras_dropout.cli", "--version"], 0),
    "keras-dropout predict (argument error)": (["-m", "keras_dropout.cli", "predict"], 2),
    'python -c "import keras_dropout"': (["-c", "import keras_dropout"], 0),
    'python -c "import keras_dropout as kd; kd.layers"': (["-c", "import keras_dropout as kd; kd.layers"], 0),
}
REFERENCE = 'python -c "import numpy"'


def time_command(command):
    """Seconds the command took; raises if it did not end as it must."""
    arguments, expected_status = command
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, *arguments], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != expected_status:
        raise RuntimeError(
            f"{arguments} exited {completed.returncode}, expected {expected_status}:\n{completed.stderr}"
        )
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (median taken)")
    args = parser.parse_args(argv)
    for command in COMMANDS.values():  # warm the file cache
        time_command(command)
    times = {name: [] for name in COMMANDS}
    names = list(COMMANDS)
    for round_index in range(args.repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(time_command(COMMANDS[name]))
    print(f"{os.cpu_count()} CPU(s), {args.repeats} interleaved rounds\n")
    print("| command | median s | / import numpy |")
    print("|---|---:|---:|")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(times[name], times[REFERENCE]))
        print(f"| `{name}` | {statistics.median(times[name]):.2f} | {ratio:.2f} |")
    help_ratio = statistics.median(
        a / b for a, b in zip(times["keras-dropout --help"], times[REFERENCE])
    )
    print(f"\n- keras-dropout --help <= 4x import numpy: {help_ratio:.2f} {'met' if help_ratio <= 4 else 'MISSED'}")


if __name__ == "__main__":
    main()
