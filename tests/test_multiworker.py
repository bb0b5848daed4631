"""Training under `MultiWorkerMirroredStrategy`: two worker processes over 127.0.0.1 against
one process at the same global batch, resume after an interruption, the chief's run
directory through `affectkit train --strategy multiworker`, TF_CONFIG errors, and the Keras
code that `affectkit.training.distribute.DistributedFit` replaces.

The workers are this module run as a script (`python -m tests.test_multiworker ROLE ...`).
"""

import hashlib
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import types

import keras
import numpy as np
import pytest

from affectkit.training import distribute

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = {"image_size": 32, "neck": {"width": 16, "dropout": 0.0},
              "backbone": {"name": "senet50", "depths": [1, 1, 1, 1], "stem_width": 8,
                           "widths": [16, 32, 64, 128]}}
TINY_SETS = ["--set", "model.image_size=32", "--set", "data.batch_size=16", "--set",
             'model.backbone={"name": "senet50", "depths": [1, 1, 1, 1], "stem_width": 8, '
             '"widths": [16, 32, 64, 128]}', "--set", "model.neck.width=16",
             "--set", "run.backup_every=2"]
GLOBAL_BATCH = 16


# ---------------------------------------------------------------------------- the workers


class _Interrupted(Exception):
    pass


class _InterruptAt(keras.callbacks.Callback):
    """Stops training at the start of epoch `epoch`, as a kill would (after the backup of the
    epoch before)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupted()


def _labels(rng, n):
    """VA, expression and AU labels with some missing (-5, -1, -1), as in Aff-Wild2."""
    va = rng.uniform(-1, 1, (n, 2)).astype("float32")
    va[rng.random(n) < 0.2] = -5.0
    expr = rng.integers(0, 8, n)
    expr[rng.random(n) < 0.2] = -1
    au = rng.integers(0, 2, (n, 12))
    au[rng.random(n) < 0.2] = -1
    return {"va": va, "expr": expr, "au": au}


def _data():
    """Training batches of `GLOBAL_BATCH` frames, each one half batch twice, and validation
    frames.

    A worker's replica trains on one half of each global batch. With both halves alike,
    every batch statistic of a half (batch normalisation, CCC, the masked means) is the
    global batch's, so data parallelism must compute exactly the gradient of one process on
    the whole batch; with distinct halves it would not, by design (as under
    `MirroredStrategy`).
    """
    rng = np.random.default_rng(0)
    half = GLOBAL_BATCH // 2
    images = rng.random((4, half, 32, 32, 3), dtype=np.float32)
    labels = _labels(rng, 4 * half)
    x = np.concatenate([np.concatenate([b, b]) for b in images])
    y = {task: np.concatenate([np.concatenate([b, b]) for b in np.split(v, 4)])
         for task, v in labels.items()}
    val_x = rng.random((40, 32, 32, 3), dtype=np.float32)
    return (x, y), (val_x, _labels(rng, 40))


def train_tiny_mtanet(run_dir, strategy_name, interrupt):
    """Two epochs of a tiny MTANet with MTANet's losses through `Trainer` (dropout off);
    returns its final weights. With `interrupt`, the first attempt stops after one epoch and
    the non-chief worker loses its backup before the second."""
    import tensorflow as tf

    from affectkit import losses
    from affectkit.training.trainer import Trainer

    strategy = distribute.build_strategy(strategy_name)
    keras.utils.set_random_seed(0)
    (x, y), (val_x, val_y) = _data()
    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    val_ds = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(GLOBAL_BATCH)
    with strategy.scope():
        network = _tiny_mtanet()
    task_losses = {"va": losses.MaskedCCCLoss(),
                   "expr": losses.MaskedCategoricalCrossentropy(),
                   "au": losses.MaskedBinaryCrossentropy()}

    def stage(extra_callbacks=()):
        trainer = Trainer(run_dir, "abaw3", ("va", "expr", "au"), strategy=strategy_name,
                          backup_every=2)
        trainer.run_stage("stage1", network, task_losses,
                          lambda: keras.optimizers.SGD(0.01, momentum=0.5), train_ds, val_ds,
                          val_y, epochs=2, extra_callbacks=extra_callbacks)
        return trainer

    if interrupt:
        try:
            stage([_InterruptAt(1)])
        except _Interrupted:
            pass
        if not distribute.is_chief(strategy):
            # This worker lost its backup: it resumes from the chief's.
            shutil.rmtree(os.path.join(distribute.worker_run_dir(run_dir, strategy), "state",
                                       "stage1_backup"))
    trainer = stage()
    trainer.finish(network, val_ds, val_y)
    trainer.remove_worker_dir()
    return network.get_weights()


def _batch_norm_halves():
    """A global batch whose halves differ, and the moving statistics after one step on it
    (momentum 0.5, from 0 and 1) when the replicas' are averaged: NumPy."""
    rng = np.random.default_rng(1)
    halves = [rng.normal(3.0, 2.0, (8, 3)).astype("float32"),
              rng.normal(-1.0, 0.5, (8, 3)).astype("float32")]
    mean = 0.5 * np.mean([h.mean(0) for h in halves], axis=0)
    variance = 0.5 + 0.5 * np.mean([h.var(0) for h in halves], axis=0)
    return np.concatenate(halves), mean, variance


def batch_norm_statistics(strategy):
    """One step of a BatchNorm + softmax model on `_batch_norm_halves` under `strategy`;
    every replica's copies of the moving mean and variance (a list of pairs)."""
    import tensorflow as tf

    from affectkit import losses
    from affectkit.training.multitask_model import MultiTaskModel

    x, _, _ = _batch_norm_halves()
    y = {"expr": np.arange(len(x)) % 3}
    with strategy.scope():
        inputs = keras.Input((3,))
        norm = keras.layers.BatchNormalization(momentum=0.5)
        outputs = keras.layers.Dense(3, activation="softmax", name="expr")(norm(inputs))
        model = MultiTaskModel(keras.Model(inputs, {"expr": outputs}),
                               {"expr": losses.MaskedCategoricalCrossentropy()})
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        model.build()
    dataset = distribute.shard_by_data(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)), strategy)
    model.fit(dataset, epochs=1, verbose=0)
    return [(m.numpy(), v.numpy()) for m, v in zip(
        strategy.experimental_local_results(norm.moving_mean.value),
        strategy.experimental_local_results(norm.moving_variance.value))]


def _worker_main(argv):
    role, *args = argv
    if role == "trainer":  # trainer RUN_DIR STRATEGY WEIGHTS.npz
        run_dir, strategy_name, out = args
        weights = train_tiny_mtanet(run_dir, strategy_name, interrupt=strategy_name != "auto")
        np.savez(out, *weights)
        if strategy_name == "multiworker":
            np.savez(out.replace(".npz", "_batch_norm.npz"),
                     *batch_norm_statistics(distribute.build_strategy("multiworker"))[0])
    else:
        raise SystemExit(f"unknown role {role!r}")


# ---------------------------------------------------------------------------- launching


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _environment(tf_config=None):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, CUDA_VISIBLE_DEVICES="", CI="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start(command, log, tf_config=None):
    return subprocess.Popen(command, cwd=REPO_ROOT, env=_environment(tf_config),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _start_workers(command, logs):
    """Starts `command` in two worker processes of one cluster; returns them."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    return [_start(command(i), log, {"cluster": cluster, "task": {"type": "worker", "index": i}})
            for i, log in enumerate(logs)]


def _wait(processes, logs, timeout=600):
    try:
        codes = [p.wait(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for code, log in zip(codes, logs):
        assert code == 0, f"{log} (exit {code}):\n" + open(log).read()[-4000:]


# ---------------------------------------------------------------------------- tests


def test_two_workers_train_like_one_process_and_resume_from_the_chief(tmp_path):
    run_dir, reference_dir = str(tmp_path / "run"), str(tmp_path / "reference")
    logs = [str(tmp_path / f"worker{i}.log") for i in range(2)] + [str(tmp_path / "one.log")]
    weights = [str(tmp_path / f"weights{i}.npz") for i in range(3)]
    script = [sys.executable, "-m", "tests.test_multiworker", "trainer"]
    workers = _start_workers(lambda i: [*script, run_dir, "multiworker", weights[i]], logs[:2])
    # The independent reference: one process, the default strategy, the same global batches
    # in the same order, trained without interruption.
    one = _start([*script, reference_dir, "auto", weights[2]], logs[2])
    _wait([*workers, one], logs)

    chief, other, single = (_load(w) for w in weights)
    network = _tiny_mtanet()
    initial = network.get_weights()
    assert len(chief) == len(single) == len(initial) > 10
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)  # (a) the workers hold one model
    # (b) as one process trains. The fused BatchNorm's moving variance averages the unbiased
    # batch variance, n / (n - 1) times the biased one, n the values it normalises over: a
    # replica's half of the global batch's. With m its momentum and T the steps, from 1:
    # (V_workers - m^T) / (V_one - m^T) = (n / (n - 1)) / (2n / (2n - 1)).
    ratios = _moving_variance_ratios(network)
    assert len(ratios) > 10
    for variable, a, b, before in zip(network.weights, chief, single, initial):
        if variable.path in ratios:
            ratio, start = ratios[variable.path]
            np.testing.assert_allclose(a - start, ratio * (b - start), rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert not np.array_equal(a, before), variable.path  # training moved every weight

    # (c) the chief's run directory; the other worker's folder is gone.
    assert sorted(os.listdir(run_dir)) == sorted(os.listdir(reference_dir))
    for name in ("model.keras", "metrics.json", "history.csv", "state"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    history = open(os.path.join(run_dir, "history.csv")).read().splitlines()
    assert len(history) == 3  # a header and one row per epoch: the other worker wrote none
    assert "resuming from its backup at epoch 2" in open(logs[0]).read()
    # Each epoch's validation pooled both workers' predictions in order: its best score is
    # the chief's own scoring of model.keras.
    import pandas as pd

    best = pd.read_csv(os.path.join(run_dir, "history.csv"))["val_score"].max()
    report = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert report["validation"]["score"] == pytest.approx(best, rel=1e-4, abs=1e-5)

    # Both workers hold the moving statistics of the whole global batch, whose halves they
    # normalised: the mean of the replicas' (NumPy).
    _, mean, variance = _batch_norm_halves()
    for path in weights[:2]:
        statistics = _load(path.replace(".npz", "_batch_norm.npz"))
        np.testing.assert_allclose(statistics[0], mean, rtol=1e-5)
        np.testing.assert_allclose(statistics[1], variance, rtol=1e-5)


def test_replicas_share_batch_norm_statistics_under_mirrored_strategy():
    import tensorflow as tf

    # ReductionToOneDevice: collective all-reduce instances clash between the several
    # strategies one test process creates.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    _, mean, variance = _batch_norm_halves()
    copies = batch_norm_statistics(strategy)
    assert len(copies) == 2
    for moving_mean, moving_variance in copies:
        np.testing.assert_allclose(moving_mean, mean, rtol=1e-5)
        np.testing.assert_allclose(moving_variance, variance, rtol=1e-5)


def _load(path):
    arrays = np.load(path)
    return [arrays[f"arr_{i}"] for i in range(len(arrays))]


def _tiny_mtanet():
    from affectkit.models import AffectModel

    keras.utils.set_random_seed(0)
    return AffectModel.from_preset("zhang2020_mtanet", schema="abaw3", **TINY_MODEL)


def _moving_variance_ratios(network, steps=8):
    """Moving variance path -> (ratio, m^steps) of every fused (4-D) BatchNorm."""
    from affectkit.models.backbones.blocks import FusedBatchNormalization

    ratios = {}
    for layer in network._flatten_layers():
        if isinstance(layer, FusedBatchNormalization) and len(layer.input.shape) == 4:
            n = GLOBAL_BATCH // 2 * layer.input.shape[1] * layer.input.shape[2]
            ratios[layer.moving_variance.path] = (
                (n / (n - 1)) / (2 * n / (2 * n - 1)), layer.momentum ** steps)
    return ratios


@pytest.mark.slow
def test_affectkit_train_on_two_workers_writes_one_run_directory(tmp_path):
    from affectkit.data.synthetic import write_demo_dataset

    data, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_demo_dataset(data, edition="abaw3", videos=4, frames=16, seed=3, image_size=32)
    logs = [str(tmp_path / f"worker{i}.log") for i in range(2)]
    command = [sys.executable, "-m", "affectkit.cli", "train", "zhang2020_mtanet", "--data", data,
               "--preset", "cpu_demo", "--epochs", "1", *TINY_SETS, "--strategy", "multiworker",
               "--out", out]
    _wait(_start_workers(lambda i: command, logs), logs)

    names = set(os.listdir(out))
    assert {"model.keras", "metrics.json", "history.csv", "config.json", "tensorboard",
            "predictions", "state"} <= names
    assert not [n for n in names if n.startswith(".worker")]
    history = open(os.path.join(out, "history.csv")).read().splitlines()
    assert len(history) == 3  # one row per stage: only the chief wrote
    for stage in ("stage1_sum", "stage2_uncertainty"):
        events = [f for _, _, files in os.walk(os.path.join(out, "tensorboard", stage))
                  for f in files]
        assert len(events) == len(set(events)) and events
    record = json.load(open(os.path.join(out, "config.json")))
    assert record["config"]["run"]["strategy"] == "multiworker"
    # The pooled validation of each epoch (predictions gathered from both workers) scores the
    # best epoch as the chief's single-process scoring of model.keras does.
    import pandas as pd

    best = pd.read_csv(os.path.join(out, "history.csv"))["val_score"].max()
    report = json.load(open(os.path.join(out, "metrics.json")))
    assert report["validation"]["score"] == pytest.approx(best, rel=1e-4, abs=1e-5)
    assert "Worker 1 done" in open(logs[1]).read()


def test_tf_config_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="TF_CONFIG environment variable, which is not set"):
        distribute.read_tf_config({})
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.read_tf_config({"TF_CONFIG": "{cluster"})
    with pytest.raises(ValueError, match="expected a 'cluster' and a 'task'"):
        distribute.read_tf_config({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}}'})
    with pytest.raises(ValueError, match="'host:port'"):
        distribute.read_tf_config({"TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}})})
    with pytest.raises(ValueError, match="an 'index' into its list"):
        distribute.read_tf_config({"TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}})})
    with pytest.raises(ValueError, match="expected one of"):
        distribute.build_strategy("horovod")
    config = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.read_tf_config({"TF_CONFIG": json.dumps(config)}) == config


@pytest.mark.parametrize("cluster, task, chief, folder", [
    ({"worker": ["a:1", "b:2"]}, ("worker", 0), True, "run"),
    ({"worker": ["a:1", "b:2"]}, ("worker", 1), False, "run/.worker_1"),
    ({"chief": ["c:0"], "worker": ["a:1"]}, ("chief", 0), True, "run"),
    ({"chief": ["c:0"], "worker": ["a:1"]}, ("worker", 0), False, "run/.worker_0"),
])
def test_the_chief_writes_the_run_and_the_others_their_own_folder(cluster, task, chief, folder):
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task[0], task_id=task[1])
    strategy = types.SimpleNamespace(cluster_resolver=resolver)
    assert distribute.is_chief(strategy) is chief
    assert distribute.worker_run_dir("run", strategy) == folder
    assert distribute.worker_run_dir(folder, strategy) == folder
    assert distribute.worker_run_dir(os.path.join(folder, "fold_1"), strategy) == \
        os.path.join(folder, "fold_1")


# The Keras code that DistributedFit replaces or relies on, as it was tested: a Keras release
# that changes any of it (keras-team/keras#20585 fixed, say) fails here; check the fix (run
# this module) and update TESTED_KERAS_VERSIONS and these digests.
KERAS_SOURCES = {
    "backend.tensorflow.trainer:TensorFlowTrainer._maybe_symbolic_build": "abb81c290f51",
    "backend.tensorflow.trainer:TensorFlowTrainer._make_function": "946f9e8fa935",
    "backend.tensorflow.trainer:TensorFlowTrainer.make_train_function": "114fe6a20dcf",
    "backend.tensorflow.trainer:TensorFlowTrainer.make_test_function": "14746678bc37",
    "backend.tensorflow.trainer:TensorFlowTrainer.fit": "062abb7af829",
    "backend.tensorflow.trainer:reduce_per_replica": "1def5ef1659f",
    "callbacks.backup_and_restore:BackupAndRestore._load_model": "8f964ea5b747",
    "callbacks.backup_and_restore:BackupAndRestore.__init__": "0f9ab955682c",
}


def _source_digest(name):
    import importlib

    module, _, qualname = name.partition(":")
    target = importlib.import_module(f"keras.src.{module}")
    for part in qualname.split("."):
        target = getattr(target, part)
    return hashlib.sha1(inspect.getsource(target).encode()).hexdigest()[:12]


def test_the_keras_code_the_fix_replaces_is_the_tested_one():
    assert keras.__version__ in distribute.TESTED_KERAS_VERSIONS, (
        f"Keras {keras.__version__}: DistributedFit was tested on "
        f"{distribute.TESTED_KERAS_VERSIONS}; run tests/test_multiworker.py and update them.")
    assert {name: _source_digest(name) for name in KERAS_SOURCES} == KERAS_SOURCES
    # The state a training step averages over the replicas: the moving statistics of
    # trainable BatchNorm layers, found in Keras' own attributes.
    inputs = keras.Input((3,))
    trained, frozen = keras.layers.BatchNormalization(), keras.layers.BatchNormalization()
    model = keras.Model(inputs, keras.layers.Dense(2)(frozen(trained(inputs))))
    frozen.trainable = False
    assert distribute._updated_state(model) == [trained.moving_mean, trained.moving_variance]


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
