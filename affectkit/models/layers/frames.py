"""Clips of frames through a per-frame backbone: fold the frames into the batch and back.

Phan et al. (ABAW3 2022) reshape `(batch, sequence, H, W, 3)` to `(batch * sequence, H, W, 3)`
for the RegNet and the features back to `(batch, sequence, D)`; the backbone's BatchNorm then
sees every frame of the batch, as in their code.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="affectkit")
class FoldFrames(keras.layers.Layer):
    """`(B, T, ...)` -> `(B * T, ...)`: the frames of every clip as one batch.

    Example:

    ```python
    clips = keras.Input((64, 112, 112, 3))
    frames = FoldFrames()(clips)                        # (None, 112, 112, 3)
    ```
    """

    def call(self, inputs):
        return ops.reshape(inputs, (-1,) + tuple(inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        return (None,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="affectkit")
class UnfoldFrames(keras.layers.Layer):
    """`(B * T, ...)` -> `(B, T, ...)`, the inverse of `FoldFrames` for clips of T frames.

    Args:
        sequence_length: T, the frames per clip.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    features = keras.Input((888,))                      # one row per frame
    sequence = UnfoldFrames(64)(features)               # (None, 64, 888)
    ```
    """

    def __init__(self, sequence_length, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)

    def call(self, inputs):
        return ops.reshape(inputs, (-1, self.sequence_length) + tuple(inputs.shape[1:]))

    def compute_output_shape(self, input_shape):
        return (None, self.sequence_length) + tuple(input_shape[1:])

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length})
        return config
