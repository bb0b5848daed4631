"""Distribution strategies of `Trainer`: by name, the chief of a cluster, and what Keras needs
to `fit` under `MultiWorkerMirroredStrategy`.

    auto         MirroredStrategy over the visible GPUs when there are several, else the
                 default (one device)
    mirrored     MirroredStrategy over this machine's GPUs (its CPU when it has none)
    multiworker  MultiWorkerMirroredStrategy over the cluster that TF_CONFIG describes

Several workers run the same program. The chief (the `chief` task, else worker 0) writes the
run directory; every other worker writes the same files to its own folder inside it,
`RUN_DIR/.worker_<index>` (`worker_run_dir`), which holds its resume state and is deleted
when the run ends. Every worker runs every step, validation included: Keras' `predict`
under the strategy gathers the replicas' outputs, a collective op that every worker must
enter.

Keras 3's TensorFlow trainer cannot `fit` under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585): it averages the first batch over the replicas to build the model
symbolically, a reduction of a nested structure that the strategy refuses, and it reduces
the scalar logs of each step along an axis they do not have. Under every strategy, it also
leaves BatchNorm's moving statistics per replica. `DistributedFit` replaces those steps for
models that mix it in (`MultiTaskModel`, which every `Trainer` stage fits); it is tested
on `TESTED_KERAS_VERSIONS` (`tests/test_multiworker.py` fails when Keras changes the code
it replaces).
"""

import json
import os
import warnings

import keras
import tensorflow as tf

STRATEGIES = ("auto", "mirrored", "multiworker")
# Keras versions whose TensorFlow trainer `DistributedFit` was tested against.
TESTED_KERAS_VERSIONS = ("3.15.1",)

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')

# One `MultiWorkerMirroredStrategy` per process: TensorFlow configures its collective ops
# once, at start-up.
_multiworker = None
# The traced sums over the workers of each strategy (`_sum_over_workers`).
_sums = {}


def default_strategy():
    """`MirroredStrategy` over the visible GPUs when there are several, else the default."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_strategy(strategy="auto"):
    """A `tf.distribute.Strategy` from a name of `STRATEGIES`, or `strategy` itself.

    `"multiworker"` reads the cluster from `TF_CONFIG` (`read_tf_config`) and must be built
    before TensorFlow runs anything in the process (`affectkit train` builds it first);
    later calls return the same strategy.
    """
    global _multiworker
    if strategy is None:
        strategy = "auto"
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {STRATEGIES} or a "
                         "tf.distribute.Strategy.")
    if strategy == "auto":
        warn_if_cluster_ignored()
        return default_strategy()
    if strategy == "mirrored":
        warn_if_cluster_ignored()
        return tf.distribute.MirroredStrategy()
    if _multiworker is None:
        read_tf_config()
        try:
            _multiworker = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:
            if "program startup" not in str(error):
                raise
            raise RuntimeError(
                "the multiworker strategy must be built before TensorFlow runs anything in "
                "the process; call affectkit.training.distribute.build_strategy("
                "'multiworker') at its start (`affectkit train --strategy multiworker` "
                "does).") from None
        if keras.__version__ not in TESTED_KERAS_VERSIONS:
            warnings.warn(
                f"Keras {keras.__version__}: affectkit's multi-worker training replaces parts "
                f"of Keras' trainer and was tested on Keras {', '.join(TESTED_KERAS_VERSIONS)}"
                " only; check it with tests/test_multiworker.py.", stacklevel=2)
    return _multiworker


def read_tf_config(environ=None):
    """The cluster and task of `TF_CONFIG` (a dict), checked; raises a `ValueError` saying
    what is wrong and what was expected."""
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG")
    if not text:
        raise ValueError("the multiworker strategy reads the cluster from the TF_CONFIG "
                         "environment variable, which is not set; expected each worker's "
                         f"TF_CONFIG to be JSON like {TF_CONFIG_EXAMPLE} (its own index).")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); expected JSON like "
                         f"{TF_CONFIG_EXAMPLE}.") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(f"TF_CONFIG {text!r}: expected a 'cluster' and a 'task' object, like "
                         f"{TF_CONFIG_EXAMPLE}.")
    for job, addresses in cluster.items():
        if job not in ("chief", "worker") or not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses):
            raise ValueError(f"TF_CONFIG cluster {cluster!r}: expected 'worker' (and at most "
                             "a 'chief') lists of 'host:port' addresses.")
    if not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"TF_CONFIG cluster {cluster!r}: expected a 'worker' list of "
                         "'host:port' addresses.")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError(f"TF_CONFIG cluster {cluster!r}: expected at most one chief.")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster or not isinstance(index, int) or not (
            0 <= index < len(cluster[task_type])):
        raise ValueError(f"TF_CONFIG task {task!r}: expected a 'type' of the cluster "
                         f"({', '.join(cluster)}) and an 'index' into its list of addresses.")
    return config


def warn_if_cluster_ignored(environ=None):
    """Warns when `TF_CONFIG` names several tasks but a single-machine strategy is used."""
    environ = os.environ if environ is None else environ
    try:
        cluster = json.loads(environ.get("TF_CONFIG") or "{}").get("cluster") or {}
        tasks = sum(len(addresses) for addresses in cluster.values())
    except (ValueError, AttributeError, TypeError):
        return
    if tasks > 1:
        warnings.warn("TF_CONFIG names a cluster of several tasks, but the strategy trains on "
                      "this machine only; every process would train on its own. Expected "
                      "--strategy multiworker (run.strategy=multiworker).", stacklevel=3)


def is_multi_worker(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` over several tasks."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker")) > 1


def task(strategy):
    """`(type, index)` of this process in the strategy's cluster; `None` without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None
    return resolver.task_type, int(resolver.task_id)


def is_chief(strategy):
    """Whether this process writes the run: the `chief` task, else worker 0, else (no
    cluster) the only process."""
    this = task(strategy)
    if this is None:
        return True
    task_type, index = this
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and index == 0
                                    and "chief" not in cluster)


def worker_name(strategy):
    """The folder name of a non-chief worker's output (`.worker_1`); None for the chief."""
    if is_chief(strategy):
        return None
    task_type, index = task(strategy)
    return f".{task_type}_{index}"


def worker_run_dir(run_dir, strategy):
    """Where this process writes the run `run_dir`: `run_dir` on the chief, else
    `run_dir/.worker_<index>` (a path already inside that folder is kept)."""
    name = worker_name(strategy)
    if name is None or name in os.path.normpath(run_dir).split(os.sep):
        return run_dir
    return os.path.join(run_dir, name)


def shard_by_data(dataset, strategy):
    """`dataset` sharded by element across the workers (each worker reads all of it and
    keeps its part of every global batch): frame datasets read files inside a map, which
    TensorFlow's file sharding cannot split. Unchanged on one worker."""
    if not is_multi_worker(strategy) or not isinstance(dataset, tf.data.Dataset):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def all_workers(strategy, flag):
    """Whether `flag` holds on every worker (a collective: every worker must call it)."""
    if not is_multi_worker(strategy):
        return bool(flag)
    return float(_sum_over_workers(strategy, [tf.constant(0.0 if flag else 1.0)])[0]) == 0.0


def broadcast_from_chief(strategy, variables):
    """Assigns the chief's values of `variables` (Keras variables, not metrics' state) on
    every worker (a collective)."""
    if not is_multi_worker(strategy) or not variables:
        return
    chief = is_chief(strategy)
    # Only the chief contributes, so that the sums are its values exactly (in float64: exact
    # for float32 values and integers below 2**53); the last one counts the chiefs.
    values = [tf.cast(tf.convert_to_tensor(v.value), "float64") for v in variables]
    if not chief:
        values = [tf.zeros_like(v) for v in values]
    *sums, chiefs = _sum_over_workers(strategy, [*values, tf.constant(float(chief), "float64")])
    if float(chiefs) != 1.0:
        raise RuntimeError(f"expected one chief in the cluster, found {float(chiefs):g}.")
    for variable, value in zip(variables, sums):
        variable.assign(tf.cast(value, variable.dtype))


def _sum_over_workers(strategy, tensors):
    """Sums over the workers of `tensors`, this worker's values (each counted once, not once
    per replica); NumPy arrays. A collective: every worker must call it alike."""
    local_replicas = len(strategy.extended.worker_devices)

    def replica_fn(values):
        context = tf.distribute.get_replica_context()
        # Replica ids run worker by worker: this worker's first replica contributes.
        first = tf.equal(context.replica_id_in_sync_group % local_replicas, 0)
        values = [tf.where(first, v, tf.zeros_like(v)) for v in values]
        return context.all_reduce(tf.distribute.ReduceOp.SUM, values)

    if id(strategy) not in _sums:
        _sums[id(strategy)] = tf.function(lambda values: strategy.experimental_local_results(
            strategy.run(replica_fn, args=(values,)))[0], reduce_retracing=True)
    return [t.numpy() for t in _sums[id(strategy)](list(tensors))]


class DistributedFit:
    """Mixin of a `keras.Model` that trains correctly under every `tf.distribute` strategy
    with Keras 3's TensorFlow trainer, `MultiWorkerMirroredStrategy` included
    (keras-team/keras#20585).

    - Each training step ends by averaging BatchNorm's moving statistics over the replicas,
      as Keras 2 did (`aggregation=MEAN`); Keras 3 leaves them per replica, and every
      replica (every worker) would keep, predict with and save its own.

    Under `MultiWorkerMirroredStrategy` only:

    - the symbolic build before the first epoch reads the shapes of this worker's first
      replica's first batch, where Keras averages the batch over every replica (a
      reduction of a nested structure, which the strategy refuses);
    - each step runs `train_step` (`test_step`) under `strategy.run` and averages its logs
      over the replicas as scalars, where Keras reduces them along axis 0; one step per
      execution (`steps_per_execution=1`).

    Example:
    >>> class MyModel(DistributedFit, keras.Model):
    ...     ...
    """

    def train_step(self, data):
        logs = super().train_step(data)
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            average_over_replicas(_updated_state(self))
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if (iterator is not None and getattr(self, "_distribute_strategy", None) is not None
                and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)):
            for _, _, batches in iterator:
                batch = next(batches)
                break
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, batch)
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def make_train_function(self, force=False):
        if not isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return super().make_train_function(force)
        if self.train_function is None or force:
            self.train_function = self._multi_worker_function(self.train_step)
        return self.train_function

    def make_test_function(self, force=False):
        if not isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return super().make_test_function(force)
        if self.test_function is None or force:
            self.test_function = self._multi_worker_function(self.test_step)
        return self.test_function

    def _multi_worker_function(self, step):
        strategy = self.distribute_strategy
        if self.steps_per_execution != 1:
            raise ValueError(f"steps_per_execution={self.steps_per_execution}: training under "
                             "the multiworker strategy runs one step per execution; expected "
                             "steps_per_execution=1.")

        def one_step(data):
            outputs = strategy.run(step, args=(data,))
            return tf.nest.map_structure(
                lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None), outputs)

        def next_step(iterator):
            return one_step(next(iterator))

        if not self.run_eagerly:
            one_step = tf.function(one_step, reduce_retracing=True, jit_compile=self.jit_compile)
            next_step = tf.function(next_step, reduce_retracing=True)

        def function(iterator):
            if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
                return next_step(iterator)
            # `train_on_batch` and `test_on_batch` pass a Python iterator of one batch.
            return one_step(next(iter(iterator)))

        return function


def average_over_replicas(variables):
    """Assigns to each of `variables` (Keras variables) its mean over the replicas; in a
    replica context (a collective: every replica must call it)."""
    if not variables:
        return
    context = tf.distribute.get_replica_context()
    # tf.identity: a value on this replica's device, which all_reduce needs.
    means = context.all_reduce(tf.distribute.ReduceOp.MEAN,
                               [tf.identity(v.value) for v in variables])
    for variable, mean in zip(variables, means):
        variable.assign(mean)


def _updated_state(model):
    """The moving statistics of `model`'s trainable BatchNorm layers: what its training step
    updates on each replica besides the trained weights. (Other state, such as a carried
    recurrent state, may be per replica by design, and is left alone.)"""
    state, seen = [], set()
    for layer in model._flatten_layers(include_self=False):
        if not layer.trainable or not isinstance(layer, keras.layers.BatchNormalization):
            continue
        for variable in layer._non_trainable_variables:
            if id(variable) not in seen and "float" in str(variable.dtype):
                seen.add(id(variable))
                state.append(variable)
    return state
