"""`MultiTaskModel`: the training wrapper that combines per-task masked losses.

The network itself stays a plain functional model (that is what `model.keras` holds);
this wrapper only adds the loss combination used while training: a fixed weighted sum,
or learned uncertainty weights (Kendall et al. 2018, as in Zhang & Gu 2020, eq. 5).
"""

import keras
import tensorflow as tf

from affectkit.losses import UncertaintyWeighting
from affectkit.training.distribute import DistributedFit


class MultiTaskModel(DistributedFit, keras.Model):
    """Trains `network` on a dict of per-task losses.

    Args:
        network: functional model with a dict of outputs keyed by task.
        losses: dict task -> Keras loss (masked: missing labels contribute nothing).
        loss_weights: dict task -> fixed weight (default 1 for each task); ignored when
            `uncertainty` is set.
        uncertainty: learn the task weights (MTANet eq. 5) instead of fixed ones.
        regression_tasks: tasks weighted 1/(2 sigma^2) under uncertainty weighting.

    It trains under every `tf.distribute` strategy, `MultiWorkerMirroredStrategy` included
    (`affectkit.training.distribute.DistributedFit`).

    Example:
    >>> model = MultiTaskModel(network, {"va": MaskedCCCLoss(), "expr": MaskedCategoricalCrossentropy()})
    >>> model.compile(optimizer="adam")
    >>> model.fit(train_ds, epochs=2)
    """

    def __init__(
        self,
        network,
        losses,
        loss_weights=None,
        uncertainty=False,
        regression_tasks=("va",),
        **kwargs,
    ):
        super().__init__(**kwargs)
        # === Layers ===
        self.network = network
        self.task_losses = dict(losses)
        self.tasks = list(self.task_losses)
        self.loss_weights = {task: 1.0 for task in self.tasks}
        self.loss_weights.update(loss_weights or {})
        self.weighting = (
            UncertaintyWeighting(
                tasks=self.tasks,
                regression_tasks=[t for t in self.tasks if t in regression_tasks],
                name="uncertainty_weighting",
            )
            if uncertainty
            else None
        )
        self.task_trackers = {
            task: keras.metrics.Mean(name=f"{task}_loss") for task in self.tasks
        }

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def build(self, input_shape=None):
        if self.weighting is not None and not self.weighting.built:
            self.weighting.build(None)
        self.built = True

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Keras losses (affectkit's too) come back divided by the number of replicas, as
        # gradients are summed across replicas. Undo that per task, combine the per-replica
        # means (the uncertainty terms are not linear in the losses), then divide once.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        per_task = {}
        for task in self.tasks:
            value = keras.ops.cast(self.task_losses[task](y[task], y_pred[task]), "float32")
            value = value * replicas
            self.task_trackers[task].update_state(value)
            per_task[task] = value
        if self.weighting is not None:
            total = self.weighting(per_task)
        else:
            total = keras.ops.sum(
                keras.ops.stack([self.loss_weights[t] * per_task[t] for t in self.tasks])
            )
        for extra in self.losses:  # regularisers of the network
            total = total + keras.ops.cast(keras.ops.sum(extra), "float32")
        return total / replicas

    @property
    def metrics(self):
        return super().metrics + list(self.task_trackers.values())

    def task_weights(self):
        """The current effective weight of each task's loss (for logs)."""
        if self.weighting is None:
            return dict(self.loss_weights)
        return self.weighting.effective_weights()
