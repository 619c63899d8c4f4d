"""Server-side request batching, as TF Serving's `--enable_batching` does it.

Concurrent requests on the same signature are merged into one call of the model: their inputs
are concatenated along dimension 0, the model runs once, and each caller gets back exactly its
own rows. The semantics are TF Serving's BatchingSession (`batching/batching_session.cc`) over a
SharedBatchScheduler queue (`tensorflow/core/kernels/batching_util/shared_batch_scheduler.h`):

- A request is a *task* of `n` rows (the shared dim 0 of its inputs). Tasks are queued per
  (signature name, input names, output filter), TF Serving's TensorSignature; the queues share
  `num_batch_threads` threads, which serve them round robin.
- A task joins the open batch of its queue. One that does not fit (open rows + `n` over
  `max_batch_size`) closes the open batch and opens a new one. A free thread takes a closed
  batch, or the open one once it is full or `batch_timeout_micros` after its first task arrived.
  At most `max_enqueued_batches` batches (the open one included) may wait for a thread.
- The merged batch is padded to the smallest `allowed_batch_sizes` entry that holds it by
  repeating the first row of the last task; with `pad_variable_length_inputs`, inputs whose
  other dimensions differ across tasks are padded at the end of each dimension, up to the
  largest, with the task's own first element. Outputs are sliced back per task (padding rows
  dropped; padded non-batch dimensions are kept, as in TF Serving).
- With `enable_large_batch_splitting`, a task may have up to `max_batch_size` rows and is split
  into pieces that fill the open batch and then batches of `max_execution_batch_size` rows; the
  caller gets the pieces' outputs concatenated, or the first piece's error.

Failures, as `ServingError` with TF Serving's code and message:

- INVALID_ARGUMENT: no inputs, a scalar input, inputs whose dim 0 differ ("Batching Run() input
  tensors must have equal 0th-dimension size"), more rows than `max_batch_size` ("Task size 4 is
  larger than maximum input batch size 3").
- UNAVAILABLE: the queue is full ("The batch scheduling queue to which this task was submitted
  is full; ..."); the batcher is closed.
- FAILED_PRECONDITION, for every task of the batch: shapes that differ without padding, an output
  with no dim 0 or whose dim 0 is not the (padded) batch size.
- RESOURCE_EXHAUSTED: every task of the batch passed its deadline while queued ("Run() timeout
  exceeded while waiting in batching queue"); if one has not, the whole batch runs.
- Whatever `run` raises reaches every task of its batch with its code kept.

One deviation: `close()` fails the tasks still queued with UNAVAILABLE, where TF Serving's queue
teardown runs them.

```python
options = BatchingOptions.from_proto(config_protos.parse_batching_parameters(text, path))
def run_signature(signature_name, inputs, output_filter):  # one merged call, e.g. a Session run
    return {"y": inputs["x"] * 2}

with Batcher(options, run_signature) as batcher:
    outputs = batcher.run("mc", {"x": rows})        # blocks; returns this caller's rows
    future = batcher.submit("mc", {"x": more_rows})  # or a concurrent.futures.Future
```
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
from concurrent.futures import Future
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from keras_dropout.serving.errors import ServingError
from keras_dropout.serving.errors import from_tf_error

logger = logging.getLogger(__name__)

RunFunction = Callable[[str, dict, tuple], Mapping[str, np.ndarray]]

# TF Serving pads only tensors of these ranks (batching_util.cc, after Eigen's PadOp).
_PADDABLE_RANKS = range(1, 7)


def _max_parallelism() -> int:
    # TF Serving's default, port::MaxParallelism(): the CPUs this process may run on.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's batching parameters, with its defaults for the fields a file leaves unset.

    Build it from a parsed `--batching_parameters_file` with `BatchingOptions.from_proto`, or
    directly. Invalid values raise `ValueError` at construction, as TF Serving refuses them when
    the model loads.

    Args:
        max_batch_size: most rows in one request and, without large batch splitting, in one
            batch. Default 1000.
        batch_timeout_micros: how long an open batch waits for more tasks after its first one
            before a free thread takes it anyway. Default 0: a free thread takes it at once, so
            tasks merge only while every thread is busy.
        max_enqueued_batches: most batches waiting for a thread, the open one included; a task
            that would need more is refused with UNAVAILABLE. Default 10. 0 counts as 1 without
            large batch splitting, as in TF Serving.
        num_batch_threads: threads executing batches, shared by all queues. Default: the number
            of CPUs this process may use.
        thread_pool_name: name prefix of those threads. Default "batch_threads".
        enable_large_batch_splitting: split a request over several batches of
            `max_execution_batch_size` rows. Default False.
        max_execution_batch_size: most rows in one batch when splitting (default
            `max_batch_size`); ignored without splitting, as in TF Serving.
        allowed_batch_sizes: if not empty, increasing sizes ending with `max_batch_size`; each
            batch is padded up to the smallest one that holds it.
        pad_variable_length_inputs: pad inputs whose non-batch dimensions differ across the
            tasks of a batch, instead of failing them. Default False.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=_max_parallelism)
    thread_pool_name: str = "batch_threads"
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        object.__setattr__(self, "allowed_batch_sizes", tuple(self.allowed_batch_sizes))
        # The checks and their wording are TF Serving's (SharedBatchScheduler::Create and
        # AddQueue, CreateBatchScheduler in bundle_factory_util.h), named by the proto's fields.
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive; was {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise ValueError(
                f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}"
            )
        if self.max_enqueued_batches < 0 or (
            self.enable_large_batch_splitting and self.max_enqueued_batches == 0
        ):
            raise ValueError(
                f"max_enqueued_batches must be positive; was {self.max_enqueued_batches}"
            )
        if self.num_batch_threads < 1:
            raise ValueError(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            if self.max_execution_batch_size < 1:
                raise ValueError(
                    "max_execution_batch_size must be positive; was "
                    f"{self.max_execution_batch_size}"
                )
            if self.max_execution_batch_size > self.max_batch_size:
                raise ValueError(
                    "When enable_large_batch_splitting is true, max_batch_size must be greater "
                    "than or equal to max_execution_batch_size; max_batch_size was "
                    f"{self.max_batch_size}, max_execution_batch_size was "
                    f"{self.max_execution_batch_size}"
                )
        sizes = self.allowed_batch_sizes
        if sizes:
            if sizes[0] < 1:
                raise ValueError(f"allowed_batch_sizes entries must be positive; was {sizes}")
            if any(later <= earlier for earlier, later in zip(sizes, sizes[1:])):
                raise ValueError(
                    f"allowed_batch_sizes entries must be monotonically increasing; was {sizes}"
                )
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    "Last entry in allowed_batch_sizes must match max_batch_size; last entry "
                    f"was {sizes[-1]}; expected {self.max_batch_size}"
                )

    @property
    def execution_batch_size(self) -> int:
        """The most rows one batch holds: `max_execution_batch_size` when splitting, else
        `max_batch_size`."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size

    @classmethod
    def from_proto(cls, parameters) -> BatchingOptions:
        """Builds the options from a `tensorflow.serving.BatchingParameters` message.

        Args:
            parameters: e.g. from `config_protos.parse_batching_parameters`. Unset wrapper
                fields take TF Serving's defaults (see the class arguments).

        Returns:
            The `BatchingOptions`.

        Raises:
            ValueError: a value TF Serving refuses.
        """
        wrapped = {
            name: getattr(parameters, name).value
            for name in (
                "max_batch_size",
                "batch_timeout_micros",
                "max_enqueued_batches",
                "num_batch_threads",
                "thread_pool_name",
                "enable_large_batch_splitting",
                "max_execution_batch_size",
            )
            if parameters.HasField(name)
        }
        return cls(
            **wrapped,
            allowed_batch_sizes=tuple(parameters.allowed_batch_sizes),
            pad_variable_length_inputs=parameters.pad_variable_length_inputs,
        )


class _QueueKey(NamedTuple):
    signature_name: str
    input_names: tuple[str, ...]
    output_filter: tuple[str, ...]


@dataclasses.dataclass(eq=False)
class _Task:
    """Rows of one request (or one piece of a split request) waiting in a batch."""

    inputs: dict[str, np.ndarray]
    size: int
    deadline: float | None
    finish: Callable[[dict | None, ServingError | None], None]


class _Batch:
    def __init__(self):
        self.tasks: list[_Task] = []
        self.size = 0
        self.start = 0.0  # time.monotonic() of the first task.


class _Queue:
    def __init__(self, key: _QueueKey):
        self.key = key
        # The last batch is open; the others are closed and wait for a thread.
        self.batches = collections.deque([_Batch()])


def _settle(future: Future, outputs: dict | None, error: ServingError | None) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outputs)


class _SplitTask:
    """Collects the pieces of one request split over several batches.

    As TF Serving's ThreadSafeStatus, the first piece to fail decides the request's error.
    """

    def __init__(self, future: Future, num_pieces: int):
        self._future = future
        self._lock = threading.Lock()
        self._outputs: list[dict | None] = [None] * num_pieces
        self._error: ServingError | None = None
        self._left = num_pieces

    def finish(self, index: int, outputs: dict | None, error: ServingError | None) -> None:
        with self._lock:
            if error is not None and self._error is None:
                self._error = error
            self._outputs[index] = outputs
            self._left -= 1
            if self._left:
                return
        if self._error is not None:
            _settle(self._future, None, self._error)
            return
        try:
            merged = {
                name: np.concatenate([piece[name] for piece in self._outputs], axis=0)
                for name in self._outputs[0]
            }
        except ValueError as concat_error:
            # Pieces padded to different shapes in different batches (pad_variable_length_inputs).
            _settle(
                self._future,
                None,
                ServingError("INTERNAL", f"Tensor concat operation failed: {concat_error}"),
            )
            return
        _settle(self._future, merged, None)


def _batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The shared dim 0 of a request's inputs (TF Serving's ComputeTensorBatchSize)."""
    if not inputs:
        raise ServingError("INVALID_ARGUMENT", "Batching Run() must have at least one input tensor")
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise ServingError(
                "INVALID_ARGUMENT", "Batching Run() input tensors must have at least one dimension"
            )
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise ServingError(
            "INVALID_ARGUMENT", "Batching Run() input tensors must have equal 0th-dimension size"
        )
    return sizes.pop()


def _padded_batch_size(allowed_batch_sizes: Sequence[int], size: int) -> int:
    """TF Serving's RoundToLowestAllowedBatchSize."""
    return next((allowed for allowed in allowed_batch_sizes if allowed >= size), size)


def _pad_variable_length(name: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Pads each task's tensor to the largest non-batch dims, with its own first element."""
    if len({array.ndim for array in arrays}) > 1:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"Tensors with name '{name}' from different tasks have different ranks and cannot be "
            "padded to one shape.",
        )
    if arrays[0].ndim not in _PADDABLE_RANKS:
        raise ServingError("INVALID_ARGUMENT", "Only tensors with rank from 1 to 6 can be padded.")
    largest = np.max([array.shape for array in arrays], axis=0)
    padded = []
    for array in arrays:
        shape = (array.shape[0], *largest[1:])
        if array.shape == shape:
            padded.append(array)
        elif np.prod(shape) == array.size:  # Both empty: TF Serving reshapes, nothing to pad.
            padded.append(array.reshape(shape))
        elif array.size == 0:
            raise ServingError(
                "INVALID_ARGUMENT", "Got empty tensor in batch of non-empty tensors."
            )
        else:
            out = np.full(shape, array.flat[0], dtype=array.dtype)
            out[tuple(slice(0, dim) for dim in array.shape)] = array
            padded.append(out)
    return padded


def _as_serving_error(error: Exception) -> ServingError:
    """What a caller sees for an exception `run` raised, keeping a TensorFlow error's code."""
    if isinstance(error, ServingError):
        return error
    # A run function that raises tf.errors.OpError has imported TensorFlow; if it is not loaded,
    # the error cannot be one, and this module need not import it.
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(error, tf.errors.OpError):
        return from_tf_error(error)
    logger.exception("Batched run failed", exc_info=error)
    return ServingError("INTERNAL", f"{type(error).__name__}: {error}")


class Batcher:
    """Merges concurrent calls of `run` into batches, as TF Serving's `--enable_batching`.

    See the module docstring for the batching rules and the errors. The threads start at
    construction; call `close()` (or use the batcher as a context manager) to stop them.

    Args:
        options: a `BatchingOptions`.
        run: `run(signature_name, inputs, output_filter) -> outputs` executes one merged batch:
            `inputs` maps each input name to the concatenated (and padded) rows, `output_filter`
            is the requests' output filter (sorted; empty means all outputs), and every returned
            output must be batch-major. It is called from the batch threads, at most
            `num_batch_threads` at a time. A `ServingError` it raises reaches every caller of the
            batch as is, a `tf.errors.OpError` with its code, anything else as INTERNAL.

    Example:

    ```python
    batcher = Batcher(BatchingOptions(max_batch_size=16, batch_timeout_micros=2000), run)
    outputs = batcher.run("mc", {"x": np.ones((2, 3), np.float32)})  # {"mean": 2 rows, ...}
    batcher.close()
    ```
    """

    def __init__(self, options: BatchingOptions, run: RunFunction):
        self.options = options
        self._run = run
        # 0 means 1 without splitting: TF Serving rewrites it so for old configs (AddQueue).
        self._max_enqueued_batches = max(options.max_enqueued_batches, 1)
        self._condition = threading.Condition()
        self._queues: dict[_QueueKey, _Queue] = {}
        self._round_robin: list[_Queue] = []
        self._next_queue = 0
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._work, name=f"{options.thread_pool_name}_{index}", daemon=True
            )
            for index in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        *,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs one request in a batch; blocks until its batch has run.

        Args:
            signature_name: the signature to run; requests only merge with the same one.
            inputs: input name -> array, all with the same dim 0 (the request's rows).
            output_filter: output names to return, all when empty.
            deadline: `time.monotonic()` time after which the request is not worth running.

        Returns:
            This request's rows of every output.

        Raises:
            ServingError: see the module docstring.
        """
        return self.submit(signature_name, inputs, output_filter, deadline=deadline).result()

    def submit(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        *,
        deadline: float | None = None,
    ) -> Future:
        """Queues one request without blocking (the arguments are `run`'s).

        Returns:
            A `concurrent.futures.Future` resolving to this request's rows of every output, or
            failing with a `ServingError` when its batch fails. It cannot be cancelled: a queued
            request is part of a batch.

        Raises:
            ServingError: at once, for a request that cannot be queued (INVALID_ARGUMENT for its
                shapes or size, UNAVAILABLE for a full queue or a closed batcher).
        """
        inputs = {name: np.asarray(value) for name, value in inputs.items()}
        size = _batch_size(inputs)
        key = _QueueKey(signature_name, tuple(sorted(inputs)), tuple(sorted(output_filter)))
        future = Future()
        future.set_running_or_notify_cancel()
        with self._condition:
            if self._closed:
                raise ServingError("UNAVAILABLE", "The batching queue is closed")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(key)
                self._round_robin.append(queue)
            self._check_capacity(queue, size)
            for task in self._pieces(queue, inputs, size, deadline, future):
                self._enqueue(queue, task)
            self._condition.notify()
        return future

    def close(self) -> None:
        """Stops the threads once the running batches finish; queued requests fail with
        UNAVAILABLE, and so do later ones."""
        with self._condition:
            self._closed = True
            stranded = [
                task
                for queue in self._round_robin
                for batch in queue.batches
                for task in batch.tasks
            ]
            for queue in self._round_robin:
                queue.batches = collections.deque([_Batch()])
            self._condition.notify_all()
        for task in stranded:
            task.finish(
                None,
                ServingError(
                    "UNAVAILABLE", "The batching queue was closed before this request was run"
                ),
            )
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:  # close() called from within `run`.
                thread.join()

    def _check_capacity(self, queue: _Queue, size: int) -> None:
        options = self.options
        if size > options.max_batch_size:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Task size {size} is larger than maximum input batch size "
                f"{options.max_batch_size}",
            )
        batches = queue.batches
        open_size = batches[-1].size
        if options.enable_large_batch_splitting:
            limit = options.execution_batch_size
            capacity = (self._max_enqueued_batches - len(batches)) * limit + limit - open_size
            if size > capacity:
                raise ServingError(
                    "UNAVAILABLE",
                    "The batch scheduling queue to which this task was submitted is full; task "
                    f"size is {size} but scheduling capacity is only {capacity} "
                    f"(num_enqueued_batches={len(batches)}, "
                    f"max_enqueued_batches={self._max_enqueued_batches}, "
                    f"open_batch_size={open_size}, max_execution_batch_size={limit})",
                )
        elif (
            open_size + size > options.max_batch_size
            and len(batches) >= self._max_enqueued_batches
        ):
            raise ServingError(
                "UNAVAILABLE",
                "The batch scheduling queue to which this task was submitted is full; currently "
                f"{len(batches)} batches enqueued and max_enqueued_batches is "
                f"{self._max_enqueued_batches}",
            )

    def _pieces(self, queue, inputs, size, deadline, future) -> list[_Task]:
        limit = self.options.execution_batch_size
        remaining = limit - queue.batches[-1].size
        if not self.options.enable_large_batch_splitting or size <= remaining:
            return [_Task(inputs, size, deadline, functools.partial(_settle, future))]
        # TF Serving's SplitInputTask: fill the open batch, then whole execution batches.
        sizes = [remaining] if remaining > 0 else []
        sizes += [min(limit, size - start) for start in range(sum(sizes), size, limit)]
        split = _SplitTask(future, len(sizes))
        pieces, start = [], 0
        for index, piece_size in enumerate(sizes):
            end = start + piece_size
            piece_inputs = {name: value[start:end] for name, value in inputs.items()}
            pieces.append(
                _Task(piece_inputs, piece_size, deadline, functools.partial(split.finish, index))
            )
            start = end
        return pieces

    def _enqueue(self, queue: _Queue, task: _Task) -> None:
        batch = queue.batches[-1]
        if batch.size + task.size > self.options.execution_batch_size:
            batch = _Batch()
            queue.batches.append(batch)
        if not batch.tasks:
            batch.start = time.monotonic()
        batch.tasks.append(task)
        batch.size += task.size

    def _work(self) -> None:
        while True:
            with self._condition:
                while True:
                    queue, batch, wait = self._take_batch()
                    if batch is not None:
                        break
                    if self._closed:
                        return
                    # Sleep until notified of a new task, or until the oldest open batch is due.
                    self._condition.wait(wait)
                if any(len(q.batches) > 1 or q.batches[0].tasks for q in self._round_robin):
                    # Wake an idle thread to take, or time, what is still queued.
                    self._condition.notify()
            self._process(queue.key, batch)

    def _take_batch(self) -> tuple[_Queue | None, _Batch | None, float | None]:
        """The next batch ready for a thread, round robin over the queues, or how long to wait.

        Must be called holding `_condition`.
        """
        now = time.monotonic()
        timeout = self.options.batch_timeout_micros / 1e6
        wait = None
        count = len(self._round_robin)
        for offset in range(count):
            index = (self._next_queue + offset) % count
            queue = self._round_robin[index]
            batch = None
            if len(queue.batches) > 1:
                batch = queue.batches.popleft()
            elif queue.batches[0].tasks:
                open_batch = queue.batches[0]
                due = open_batch.start + timeout
                if open_batch.size >= self.options.execution_batch_size or now >= due:
                    batch = open_batch
                    queue.batches[0] = _Batch()
                else:
                    wait = due - now if wait is None else min(wait, due - now)
            if batch is not None:
                self._next_queue = (index + 1) % count
                return queue, batch, None
        return None, None, wait

    def _process(self, key: _QueueKey, batch: _Batch) -> None:
        """Runs one batch and hands every task its rows or the batch's error."""
        tasks = batch.tasks
        try:
            now = time.monotonic()
            if all(task.deadline is not None and task.deadline <= now for task in tasks):
                raise ServingError(
                    "RESOURCE_EXHAUSTED", "Run() timeout exceeded while waiting in batching queue"
                )
            inputs, padded_size = self._merge_inputs(tasks, batch.size)
            outputs = self._run(key.signature_name, inputs, key.output_filter)
            results = self._split_outputs(outputs, tasks, padded_size)
        except Exception as error:  # noqa: BLE001 - every caller must hear of any failure.
            failure = _as_serving_error(error)
            for task in tasks:
                # One instance per caller: each thread raises (and so mutates) its own.
                task.finish(None, ServingError(failure.code, failure.message))
            return
        for task, result in zip(tasks, results):
            task.finish(result, None)

    def _merge_inputs(self, tasks: list[_Task], size: int) -> tuple[dict[str, np.ndarray], int]:
        """Concatenates the tasks' inputs (TF Serving's MergeInputTensors) and pads the batch."""
        with_rows = [task for task in tasks if task.size]
        # A batch without rows has no row to pad with: it runs as it is.
        padded_size = (
            _padded_batch_size(self.options.allowed_batch_sizes, size) if with_rows else size
        )
        merged = {}
        for name in tasks[0].inputs:
            arrays = [task.inputs[name] for task in tasks]
            if self.options.pad_variable_length_inputs:
                arrays = _pad_variable_length(name, arrays)
            elif any(array.shape[1:] != arrays[0].shape[1:] for array in arrays):
                raise ServingError(
                    "FAILED_PRECONDITION",
                    f"Tensors with name '{name}' from different tasks have different shapes and "
                    "padding is turned off. Set pad_variable_length_inputs to true, or ensure "
                    "that all tensors with the same name have equal dimensions starting with the "
                    "first dim.",
                )
            if padded_size > size:
                # TF Serving repeats the first row of the last task: a valid input row.
                last = arrays[tasks.index(with_rows[-1])]
                arrays.append(np.repeat(last[:1], padded_size - size, axis=0))
            merged[name] = np.concatenate(arrays, axis=0)
        return merged, padded_size

    @staticmethod
    def _split_outputs(
        outputs: Mapping[str, np.ndarray], tasks: list[_Task], padded_size: int
    ) -> list[dict[str, np.ndarray]]:
        """Slices each output back into the tasks' rows (TF Serving's SplitOutputTensors)."""
        outputs = {name: np.asarray(value) for name, value in outputs.items()}
        for value in outputs.values():
            if value.ndim == 0:
                raise ServingError("FAILED_PRECONDITION", "Batched output tensor has 0 dimensions")
            if value.shape[0] != padded_size:
                raise ServingError(
                    "FAILED_PRECONDITION",
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                    "dimension sizes of the input tensors",
                )
        results, start = [], 0
        for task in tasks:
            end = start + task.size
            results.append({name: value[start:end] for name, value in outputs.items()})
            start = end
        return results
