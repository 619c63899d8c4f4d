"""The `keras-dropout` command: demo, export, serve, check, predict, score.

Parsing imports neither Keras nor TensorFlow (`--help`, `--version` and bad arguments answer at
once); a subcommand imports what it needs when it runs.
"""

import os

# Before anything can load TensorFlow: its C++ logging is read once, at load.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def _export(args):
    import keras

    import keras_dropout.layers  # noqa: F401  (registers the layers a .keras file may hold)
    import keras_dropout.losses  # noqa: F401  (and the loss of a compiled one)
    from keras_dropout.serving.export import export

    model = keras.saving.load_model(args.model)
    try:
        path = export(
            model,
            args.base_path,
            version=args.version,
            num_samples=args.num_samples,
            max_samples=args.max_samples,
            task=args.task,
            from_logits=args.from_logits,
            warmup=not args.no_warmup,
            batching=args.batching,
            moments=args.moments,
            variance_output=args.variance_output,
            variance_kind=args.variance_kind,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _check(args):
    from keras_dropout.serving.check import check

    problems = check(args.path, batching=args.batching)
    for problem in problems:
        print(f"- {problem}")
    if not problems:
        print(f"{args.path}: no problems found; servable by TensorFlow Serving.")
    return 1 if problems else 0


def _serve(args):
    from keras_dropout.serving.server import serve_forever

    return serve_forever(args)


def _predict(args):
    from keras_dropout.serving.client import Client
    from keras_dropout.serving.client import ServingError

    inputs = json.loads(args.inputs)
    if not isinstance(inputs, dict):
        print("--inputs must be a JSON object: {\"input name\": value, ...}", file=sys.stderr)
        return 2
    client = Client(rest_url=args.rest_url, grpc_target=args.grpc_target, model_name=args.model_name)
    try:
        # Over gRPC the client casts JSON numbers to the signature's dtypes.
        outputs = client.predict(inputs, signature_name=args.signature_name, version=args.version)
    except (ServingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(json.dumps({name: value.tolist() for name, value in outputs.items()}, indent=2))
    return 0


def _score(args, pipeline_args):
    try:
        from keras_dropout.beam import score
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pipeline_args = [f"--runner={args.runner}", *pipeline_args]
    if not any(arg.split("=")[0] == "--default_sdk_harness_log_level" for arg in pipeline_args):
        # Beam's workers log every bundle at INFO; the progress lines are ours.
        pipeline_args = [*pipeline_args, "--default_sdk_harness_log_level=WARNING"]
    try:
        summary = score(
            args.model,
            args.input,
            args.output,
            num_samples=args.num_samples,
            seed=args.seed,
            task=args.task,
            from_logits=args.from_logits,
            outputs=args.outputs.split(","),
            interval_level=args.interval_level,
            jit_compile={"auto": "auto", "xla": True, "graph": False}[args.jit_compile],
            key_column=args.key_column,
            feature_columns=args.feature_columns.split(",") if args.feature_columns else None,
            input_format=args.input_format,
            output_format=args.output_format,
            num_shards=args.num_shards,
            min_batch_size=args.min_batch_size,
            max_batch_size=args.max_batch_size,
            pipeline_args=pipeline_args,
            variance_output=args.variance_output,
            variance_kind=args.variance_kind,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # the pipeline ran and failed
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    # Records that could not be scored are written with their reasons; a batch job
    # that silently dropped some must not look like a success.
    return 1 if summary["errors"] else 0


def _demo(args):
    from keras_dropout.demo import run_demo

    return run_demo(output_dir=args.output_dir, epochs=args.epochs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keras-dropout")
    except PackageNotFoundError:
        return "unknown"


def _add_variance_arguments(parser):
    parser.add_argument(
        "--variance_output",
        default=None,
        help="output holding the other output's (log-)variance (two-output models; a GaussianHead needs none)",
    )
    parser.add_argument("--variance_kind", choices=("log", "variance"), default=None, help="default with --variance_output: log")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-dropout",
        description="Monte Carlo dropout for Keras 3: train, export, serve and query uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"keras-dropout {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train, export, serve and query a small MC-dropout model end to end")
    demo.add_argument("--output-dir", default="keras_dropout_demo", help="where the plot and the export go")
    demo.add_argument("--epochs", type=int, default=60, help="training epochs")
    demo.set_defaults(run=_demo)

    export = commands.add_parser("export", help="export a .keras model as a TF Serving SavedModel with MC signatures")
    export.add_argument("model", help="path to a .keras file")
    export.add_argument("base_path", help="model base directory; the version folder is created inside")
    export.add_argument("--version", type=int, default=None, help="default: largest existing + 1")
    export.add_argument("--num_samples", type=int, default=32, help="samples of the `mc` signature")
    export.add_argument("--max_samples", type=int, default=1024, help="cap on `mc_sample`'s num_samples")
    export.add_argument("--task", choices=("auto", "regression", "classification"), default="auto")
    export.add_argument("--from_logits", action="store_true")
    export.add_argument("--batching", action="store_true", help="leave mc_sample out (for --enable_batching)")
    export.add_argument("--no-warmup", action="store_true", help="do not write assets.extra warmup requests")
    export.add_argument("--moments", action="store_true", help="add a `moments` signature (one pass, no sampling)")
    _add_variance_arguments(export)
    export.set_defaults(run=_export)

    check = commands.add_parser("check", help="report what TF Serving would trip on in a SavedModel")
    check.add_argument("path", help="a version directory, e.g. models/demo/1")
    check.add_argument("--batching", action="store_true", help="also check for --enable_batching")
    check.set_defaults(run=_check)

    serve = commands.add_parser("serve", help="serve SavedModels over TF Serving's REST and gRPC APIs")
    from keras_dropout.serving.server import add_serve_arguments

    add_serve_arguments(serve)
    serve.set_defaults(run=_serve)

    predict = commands.add_parser("predict", help="query a TF Serving (or keras-dropout serve) endpoint")
    predict.add_argument("--rest_url", default=None, help="e.g. http://127.0.0.1:8501")
    predict.add_argument("--grpc_target", default=None, help="e.g. 127.0.0.1:8500")
    predict.add_argument("--model_name", required=True)
    predict.add_argument("--signature_name", default="mc")
    predict.add_argument("--version", type=int, default=None)
    predict.add_argument("--inputs", required=True, help='JSON object, e.g. \'{"x": [[0.1, 0.2]], "num_samples": 64}\'')
    predict.set_defaults(run=_predict)

    score = commands.add_parser(
        "score",
        help="MC-dropout statistics for every example of TFRecord/Parquet/CSV files, on Apache Beam",
        description="Scores every example of INPUT with MC dropout on Apache Beam (DirectRunner by default) and "
        "writes one record of statistics per example to OUTPUT (.parquet or .jsonl, as Beam shards). Flags not "
        "listed here are Beam pipeline options, written --flag=value, e.g. --runner=DataflowRunner --project=... or "
        "--direct_num_workers=4 --direct_running_mode=multi_processing. Needs the `beam` extra.",
    )
    score.add_argument("model", help="a .keras file (local or any filesystem Beam reads)")
    score.add_argument("input", help="file or glob: TFRecord of tf.train.Example, Parquet, or CSV with a header")
    score.add_argument("output", help="e.g. scores.parquet or scores.jsonl (written as shards)")
    score.add_argument("--runner", default="DirectRunner", help="Beam runner, e.g. DataflowRunner, FlinkRunner, SparkRunner")
    score.add_argument("--num_samples", type=int, default=50, help="MC samples per example")
    score.add_argument("--seed", type=int, default=0, help="same seed and key => same statistics")
    score.add_argument("--task", choices=("auto", "regression", "classification"), default="auto")
    score.add_argument("--from_logits", action="store_true")
    score.add_argument("--outputs", default="mean,variance", help="comma-separated statistics (see keras_dropout.beam.STATISTICS)")
    score.add_argument("--interval_level", type=float, default=0.95, help="level of interval_lower/interval_upper")
    score.add_argument(
        "--jit_compile",
        choices=("auto", "xla", "graph"),
        default="auto",
        help="predict_mc's jit_compile; 'auto' lets each worker time XLA against the graph "
        "(results agree to float rounding), xla/graph give bitwise-equal results everywhere",
    )
    score.add_argument("--key_column", default=None, help="column with each example's key; default: its position")
    score.add_argument("--feature_columns", default=None, help="comma-separated columns feeding a one-input model, in order")
    score.add_argument("--input_format", choices=("tfrecord", "parquet", "csv"), default=None, help="default: from the extension")
    score.add_argument("--output_format", choices=("parquet", "jsonl"), default=None, help="default: from the extension")
    score.add_argument("--num_shards", type=int, default=0, help="output shards; 0: the runner decides")
    score.add_argument("--min_batch_size", type=int, default=None, help="examples per predict_mc call, at least")
    score.add_argument("--max_batch_size", type=int, default=None, help="examples per predict_mc call, at most")
    _add_variance_arguments(score)
    score.set_defaults(run=_score)
    return parser


def main(argv=None):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "score":
        # Beam's own flags (runner, project, workers...) go to its PipelineOptions.
        return args.run(args, unknown)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "predict" and not (args.rest_url or args.grpc_target):
        print("predict needs --rest_url or --grpc_target", file=sys.stderr)
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
