"""Channel pooling for CBAM's spatial attention (Woo et al., ECCV 2018).

Squeeze-and-excitation (Hu et al. 2018) and the channel half of CBAM (Woo et al. 2018) are
built from core layers in `affectkit.models.backbones.senet`. The spatial half of CBAM needs
per-pixel statistics taken *across channels*, which is what `ChannelPooling` computes.
"""

import keras
from keras import ops

_STATISTICS = ("mean", "max")


@keras.saving.register_keras_serializable(package="affectkit")
class ChannelPooling(keras.layers.Layer):
    """Pools a feature map across its channel axis into a few per-pixel statistics.

    For an input of shape `(batch, height, width, channels)` it returns
    `(batch, height, width, len(statistics))`: the channel mean and/or channel maximum at
    every pixel, stacked in the order given. This is the "[AvgPool(F); MaxPool(F)]"
    descriptor of CBAM's spatial attention module (Woo et al., "CBAM: Convolutional Block
    Attention Module", ECCV 2018, eq. 3). The authors' code stacks the maximum first
    (`ChannelPool` in `MODELS/cbam.py`); pass `statistics=("max", "mean")` to match it.

    Args:
        statistics: tuple of `"mean"` and/or `"max"`, in output order. Defaults to
            `("mean", "max")`, the order in the paper's equation.
        axis: the channel axis to pool over. Defaults to -1 (channels last).
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    ```python
    x = keras.Input((14, 14, 256))
    descriptor = ChannelPooling(statistics=("max", "mean"))(x)  # (None, 14, 14, 2)
    gate = keras.layers.Conv2D(1, 7, padding="same", activation="sigmoid")(descriptor)
    refined = keras.layers.Multiply()([x, gate])
    ```
    """

    def __init__(self, statistics=_STATISTICS, axis=-1, **kwargs):
        super().__init__(**kwargs)
        statistics = tuple(statistics)
        if not statistics or any(s not in _STATISTICS for s in statistics):
            raise ValueError(
                f"ChannelPooling: `statistics` must be a non-empty sequence of "
                f"{_STATISTICS}; got {statistics!r}."
            )
        self.statistics = statistics
        self.axis = int(axis)

    def call(self, inputs):
        pooled = []
        for statistic in self.statistics:
            if statistic == "mean":
                pooled.append(ops.mean(inputs, axis=self.axis, keepdims=True))
            else:
                pooled.append(ops.max(inputs, axis=self.axis, keepdims=True))
        if len(pooled) == 1:
            return pooled[0]
        return ops.concatenate(pooled, axis=self.axis)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[self.axis] = len(self.statistics)
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update({"statistics": list(self.statistics), "axis": self.axis})
        return config
