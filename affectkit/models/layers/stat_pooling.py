"""`StatPooling`: max, min and mean over time (the "STAT" module of Do et al., FG 2020)."""

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="affectkit")
class StatPooling(keras.layers.Layer):
    """Max, min and mean of a sequence over time, concatenated.

    For `(batch, time, features)` it returns `(batch, 3 * features)` laid out as
    `[max, min, mean]`. This is the STAT module of Do et al., "Affective Expression Analysis
    in-the-wild using Multi-Task Temporal Statistical Deep Learning Model" (FG 2020), applied
    there to the 7-class probability vectors of the last `s` frames.

    A Keras mask (or an explicit boolean `mask` of shape `(batch, time)`, True = valid step)
    excludes padded steps from all three statistics. A sequence with no valid step gives
    zeros.

    Args:
        axis: the time axis. Defaults to 1.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    probs = keras.Input((16, 7))                # 16 frames of class probabilities
    stat = StatPooling()(probs)                 # (None, 21)
    ```
    """

    def __init__(self, axis=1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.concatenate(
                [
                    ops.max(inputs, axis=self.axis),
                    ops.min(inputs, axis=self.axis),
                    ops.mean(inputs, axis=self.axis),
                ],
                axis=-1,
            )
        valid = ops.cast(mask, "bool")
        rank = len(inputs.shape)
        axis = self.axis % rank
        while len(valid.shape) < rank:
            valid = ops.expand_dims(valid, -1)
        valid = ops.broadcast_to(valid, ops.shape(inputs))
        any_valid = ops.any(valid, axis=axis)
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        large = ops.cast(float(np.finfo(dtype).max), dtype)
        maximum = ops.max(ops.where(valid, inputs, -large), axis=axis)
        minimum = ops.min(ops.where(valid, inputs, large), axis=axis)
        weights = ops.cast(valid, inputs.dtype)
        count = ops.sum(weights, axis=axis)
        mean = ops.sum(inputs * weights, axis=axis) / ops.maximum(count, 1.0)
        zeros = ops.zeros_like(mean)
        return ops.concatenate(
            [
                ops.where(any_valid, maximum, zeros),
                ops.where(any_valid, minimum, zeros),
                mean,
            ],
            axis=-1,
        )

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        axis = self.axis % len(shape)
        del shape[axis]
        shape[-1] = None if shape[-1] is None else 3 * shape[-1]
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis})
        return config
