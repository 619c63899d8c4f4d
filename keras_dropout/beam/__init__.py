"""Batch Monte Carlo scoring on Apache Beam (extra `beam`: `pip install "keras-dropout[beam]"`).

    from apache_beam.ml.inference.base import RunInference
    from keras_dropout.beam import MCModelHandler

    scores = examples | RunInference(MCModelHandler("model.keras", num_samples=50, seed=0))

Elements are `(key, features)`; the key is the row id of `kd.predict_mc`, so an example's
statistics depend only on (seed, key, features), whatever runner, batching or worker computes
them. `score` is the pipeline behind `keras-dropout score` (files in, one record of statistics per
example out).
"""

try:
    import apache_beam  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "keras_dropout.beam needs Apache Beam: pip install \"keras-dropout[beam]\""
    ) from error

from keras_dropout.beam.handler import STATISTICS
from keras_dropout.beam.handler import MCModelHandler
from keras_dropout.beam.score import score

__all__ = ["MCModelHandler", "STATISTICS", "score"]
