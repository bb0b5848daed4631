"""`Trainer`: the run directory, strategy, callbacks and resumable stages shared by all recipes.

A run directory holds:

    model.keras      the network with the best ABAW validation score
    metrics.json     every ABAW component on validation, and chance baselines
    history.csv      one row per epoch of every stage (losses, validation scores)
    *.png            learning curves, confusion matrix, per-AU F1, VA predicted vs true
    tensorboard/     TensorBoard logs
    state/           resume state (backups, finished stages, best score)

Running the same command again after a kill resumes: finished stages are skipped and the
stage in progress restarts from its last backup (`keras.callbacks.BackupAndRestore`).

Under `MultiWorkerMirroredStrategy` (`strategy="multiworker"`) every worker runs the same
stages; the chief writes the run directory, the other workers the same files to their own
`RUN_DIR/.worker_<index>` (`affectkit.training.distribute.worker_run_dir`), their own
resume state included. A resumed stage takes the chief's backup on every worker. Each
epoch's ABAW validation runs on every worker, each predicting its share of the validation
set (Keras gathers the outputs across workers, a collective op that every worker must
enter), and scores the pooled predictions: every worker sees the same `val_score`, so
callbacks that read it (reduce-on-plateau, say) act alike on every worker.
"""

import json
import os
import shutil
import sys

import keras
import numpy as np

from affectkit import metrics
from affectkit.labels import get_schema
from affectkit.training import distribute, run_directory
from affectkit.training.distribute import default_strategy  # noqa: F401 (its former home)
from affectkit.training.multitask_model import MultiTaskModel


def validation_scores(schema, tasks, y_true, y_pred):
    """ABAW scores of each task plus `score`, their sum.

    With all three tasks in ABAW3 and later this sum is the MTL challenge's P.
    Components are prefixed with the task (`va_valence`, `expr_f1`, ...).
    """
    scores, total = {}, 0.0
    for task in tasks:
        task_scores = metrics.abaw_scores(task, schema, y_true[task], y_pred[task])
        total += float(task_scores["score"])
        for name, value in task_scores.items():
            scores[f"{task}_{name}"] = value
    scores["score"] = total
    return scores


def _scalars(scores):
    return {k: float(v) for k, v in scores.items() if np.ndim(v) == 0}


class ABAWValidation(keras.callbacks.Callback):
    """Scores the network on the validation set with the official metrics after each epoch.

    Adds `val_score` and `val_<component>` to the epoch logs (so `CSVLogger` and the
    history see them) and saves the network to `best_path` when `val_score` improves.
    The best score is kept in `state_path`, so a resumed run keeps comparing with it.
    """

    def __init__(self, network, dataset, y_true, schema, tasks, best_path, state_path):
        super().__init__()
        self.network = network
        self.dataset = dataset
        self.y_true = y_true
        self.schema = schema
        self.tasks = tasks
        self.best_path = best_path
        self.state_path = state_path
        self.best = -np.inf
        if os.path.exists(state_path):
            with open(state_path) as f:
                self.best = json.load(f)["best_score"]

    def on_epoch_end(self, epoch, logs=None):
        y_pred = predict_arrays(self.network, self.dataset, self.tasks)
        scores = _scalars(validation_scores(self.schema, self.tasks, self.y_true, y_pred))
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in scores.items()})
        if scores["score"] > self.best:
            self.best = scores["score"]
            run_directory.write_atomic(self.best_path, self.network.save)
            with open(self.state_path, "w") as f:
                json.dump({"best_score": self.best, "epoch": epoch}, f)


def predict_arrays(network, dataset, tasks):
    """Runs `network` over a dataset of `(images, labels)` or images; returns NumPy per task."""
    outputs = network.predict(dataset, verbose=0)
    return {task: np.asarray(outputs[task]) for task in tasks}


class Trainer:
    """Runs training stages into a run directory, resumably.

    Args:
        run_dir: the run directory (created).
        schema: `LabelSchema` or edition name.
        tasks: tasks trained and scored, e.g. `("va", "expr", "au")`.
        strategy: a `tf.distribute` strategy, or its name: `"auto"` (default:
            `MirroredStrategy` with several GPUs, else one device), `"mirrored"` or
            `"multiworker"` (`affectkit.training.distribute.build_strategy`). Under
            `"multiworker"`, `run_dir` of a non-chief worker becomes its own folder
            `run_dir/.worker_<index>` (`remove_worker_dir` deletes it at the end).
        mixed_precision: train in `mixed_float16` (heads stay float32).
        jit_compile: compile train steps with XLA (slower on CPU, often faster on GPU).
        backup_every: steps between mid-epoch backups (`BackupAndRestore(save_freq=...)`);
            `"epoch"` to back up only at epoch ends.

    Example:
    >>> trainer = Trainer("runs/mtanet", "abaw3", ("va", "expr", "au"))
    >>> with trainer.strategy.scope():
    ...     network = build_network()
    >>> trainer.run_stage("stage1", network, losses, lambda: keras.optimizers.Adam(1e-3),
    ...                   train_ds, val_ds, val_labels, epochs=5)
    >>> trainer.finish(network, val_ds, val_labels)
    """

    def __init__(
        self,
        run_dir,
        schema,
        tasks,
        strategy=None,
        mixed_precision=False,
        jit_compile=False,
        backup_every=50,
    ):
        self.strategy = distribute.build_strategy(strategy)
        self.is_chief = distribute.is_chief(self.strategy)
        self.run_dir = distribute.worker_run_dir(run_dir, self.strategy)
        self.schema = get_schema(schema)
        self.tasks = tuple(tasks)
        self.jit_compile = jit_compile
        self.backup_every = backup_every
        self.state_dir = os.path.join(self.run_dir, "state")
        os.makedirs(self.state_dir, exist_ok=True)
        if mixed_precision:
            keras.mixed_precision.set_dtype_policy("mixed_float16")

    @classmethod
    def from_config(cls, run_dir, schema, tasks, config):
        """A trainer with a recipe config's run options: `mixed_precision`, `jit_compile`
        (default False), `backup_every` (default 50) and `strategy` (default `"auto"`)."""
        return cls(run_dir, schema, tasks, strategy=config.get("strategy", "auto"),
                   mixed_precision=config.get("mixed_precision", False),
                   jit_compile=config.get("jit_compile", False),
                   backup_every=config.get("backup_every", 50))

    def remove_worker_dir(self):
        """Deletes a non-chief worker's folder (`run_dir/.worker_<index>`) once the run is
        done with it; nothing on the chief."""
        if not self.is_chief:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def best_path(self):
        return os.path.join(self.state_dir, "best.keras")

    def _stage_done_path(self, stage):
        return os.path.join(self.state_dir, f"{stage}.weights.h5")

    def run_stage(
        self,
        stage,
        network,
        losses,
        optimizer,
        train_ds,
        val_ds,
        val_labels,
        epochs,
        loss_weights=None,
        uncertainty=False,
        steps_per_epoch=None,
        extra_callbacks=(),
    ):
        """Trains one stage; skips it (loading its weights) if a previous run finished it.

        Args:
            stage: stage name, unique within the run (`"stage1"`).
            network: the functional network (built under `self.strategy.scope()`).
            losses: dict task -> masked loss.
            optimizer: a callable returning a fresh Keras optimizer.
            train_ds, val_ds: datasets of `(images, {task: labels})`.
            val_labels: dict task -> NumPy labels of `val_ds` in order.
            epochs: epochs of this stage.
            loss_weights, uncertainty: see `MultiTaskModel`.
        Returns:
            The stage's `keras.callbacks.History`, or None if it was already done.
        """
        done_path = self._stage_done_path(stage)
        # Workers skip a stage together or train it together (a finished stage then restores
        # its last backup and trains no further epoch).
        if distribute.all_workers(self.strategy, os.path.exists(done_path)):
            network.load_weights(done_path)
            print(f"[{stage}] already finished in {self.run_dir}; weights loaded.")
            return None
        backup_dir = os.path.join(self.state_dir, f"{stage}_backup")
        metadata = os.path.join(backup_dir, "training_metadata.json")
        if os.path.exists(metadata):
            with open(metadata) as f:
                epoch = json.load(f)["epoch"]
            print(f"[{stage}] resuming from its backup at epoch {epoch + 1} ({self.run_dir}).")
        train_ds = distribute.shard_by_data(train_ds, self.strategy)
        val_ds = distribute.shard_by_data(val_ds, self.strategy)
        with self.strategy.scope():
            model = MultiTaskModel(
                network, losses, loss_weights=loss_weights, uncertainty=uncertainty,
                name=f"{stage}_training",
            )
            model.compile(optimizer=optimizer(), jit_compile=self.jit_compile)
            model.build()
        callbacks = [
            ABAWValidation(
                network, val_ds, val_labels, self.schema, self.tasks, self.best_path,
                os.path.join(self.state_dir, "best.json"),
            ),
            # After the validation (which adds val_score), before the logs are written
            # (e.g. reduce-on-plateau's learning_rate reaches history.csv).
            *extra_callbacks,
            keras.callbacks.TensorBoard(os.path.join(self.run_dir, "tensorboard", stage)),
            keras.callbacks.TerminateOnNaN(),
            _StageCSVLogger(stage, os.path.join(self.run_dir, "history.csv")),
            # After the CSV logger, so a backup never claims an epoch the history lacks.
            # Two backups: a kill while one is written leaves the other to resume from.
            _Backup(backup_dir, save_freq=self.backup_every, delete_checkpoint=False,
                    double_checkpoint=True),
        ]
        history = model.fit(
            train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself, seeded
            # A progress bar on a terminal; one line per epoch in CI and in log files.
            verbose="auto" if sys.stdout.isatty() and not os.environ.get("CI") else 2,
        )
        if model.stop_training and any(
            np.isnan(v) for v in history.history.get("loss", [])
        ):
            raise FloatingPointError(f"[{stage}] loss became NaN; stopped ({self.run_dir}).")
        run_directory.write_atomic(done_path, network.save_weights)
        weights = {t: float(w) for t, w in model.task_weights().items()}
        with open(os.path.join(self.state_dir, f"{stage}.json"), "w") as f:
            json.dump({"task_weights": weights}, f, indent=2)
        return history

    def finish(self, network, val_ds, val_labels, baselines=None, extra=None):
        """Loads the best network, writes `model.keras`, `metrics.json` and the plots.

        Returns the validation scores of the best network.
        """
        from affectkit import plots

        best = keras.saving.load_model(self.best_path) if os.path.exists(self.best_path) else network
        y_pred = predict_arrays(best, distribute.shard_by_data(val_ds, self.strategy), self.tasks)
        scores = validation_scores(self.schema, self.tasks, val_labels, y_pred)
        model_path = os.path.join(self.run_dir, "model.keras")
        run_directory.write_atomic(model_path, best.save)
        report = {"edition": self.schema.edition, "tasks": list(self.tasks),
                  "validation": scores}
        if baselines is not None:
            report["chance_baselines"] = baselines
        report.update(extra or {})
        from affectkit.evaluation.scoring import write_scores

        write_scores(os.path.join(self.run_dir, "metrics.json"), report)
        plots.write_run_plots(self.run_dir, self.schema, self.tasks, val_labels, y_pred, scores)
        return scores


    def update_report(self, entries):
        """Adds `entries` to the run's `metrics.json`; returns the whole report."""
        from affectkit.evaluation.scoring import write_scores

        path = os.path.join(self.run_dir, "metrics.json")
        with open(path) as f:
            report = json.load(f)
        report.update(entries)
        write_scores(path, report)
        return report


class _Backup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that backs up every `save_freq` steps and at every epoch end,
    so a resumed run repeats neither a finished epoch nor more than `save_freq` steps.

    Each worker of a cluster backs up to its own folder (Keras' callback has no notion of
    workers: on a shared file system they would write one file). Restoring, every worker
    takes the chief's weights, optimizer state and epoch, so that a kill that caught the
    workers between two backups, or a worker that lost its folder, still resumes them alike.
    """

    def on_train_begin(self, logs=None):
        restored = os.path.exists(self._weights_path) or os.path.exists(self._prev_weights_path)
        super().on_train_begin(logs)
        strategy = self.model.distribute_strategy
        # Workers that all start afresh hold the same state already.
        if not distribute.is_multi_worker(strategy) or distribute.all_workers(strategy,
                                                                              not restored):
            return
        epoch = keras.Variable(self.model._initial_epoch or 0, dtype="int64", trainable=False)
        distribute.broadcast_from_chief(
            strategy, [*self.model.weights, *self.model.optimizer.variables, epoch])
        self.model._initial_epoch = int(epoch.numpy())

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            self._save_model()


class _StageCSVLogger(keras.callbacks.CSVLogger):
    """Appends one row per epoch to `history.csv`, with a `stage` column naming the stage."""

    def __init__(self, stage, path):
        super().__init__(path, append=True)
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {"stage": self.stage, **(logs or {})})
