"""`FusionBlock`: concatenate per-frame features of several modalities and project them to
the model width (Liu et al. 2023, eq. 1)."""

import keras
from keras import ops


def _as_list(inputs):
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


@keras.saving.register_keras_serializable(package="affectkit")
class FusionBlock(keras.layers.Layer):
    """Concatenates per-frame features of several modalities and projects them to `units`.

    Liu et al. (ABAW5, CVPRW 2023), eq. 1: `f_m = W_f [f_v; f_a] + b_f`, a plain linear
    projection of the concatenated visual and audio features to the model width (pass
    `activation=None` for exactly that). Order: concatenate -> Dense(units) -> optional
    LayerNormalization -> activation -> Dropout.

    Args:
        units: output width.
        dropout: dropout rate after the projection. Defaults to 0.
        activation: activation after the projection (any Keras activation name, or None).
            Defaults to "relu".
        use_layer_norm: apply LayerNormalization after the Dense. Defaults to False.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    visual, audio = keras.Input((128, 768)), keras.Input((128, 512))
    fused = FusionBlock(1024, activation=None)([visual, audio])   # (None, 128, 1024)
    ```
    """

    def __init__(self, units, dropout=0.0, activation="relu", use_layer_norm=False, **kwargs):
        super().__init__(**kwargs)
        # Layers.
        self.projection = keras.layers.Dense(int(units), name="projection")
        self.norm = keras.layers.LayerNormalization(name="norm") if use_layer_norm else None
        self.activation_fn = keras.activations.get(activation)
        self.dropout_layer = keras.layers.Dropout(float(dropout), name="dropout")
        # Config.
        self.units = int(units)
        self.dropout = float(dropout)
        self.activation = (
            activation
            if activation is None or isinstance(activation, str)
            else keras.activations.serialize(self.activation_fn)
        )
        self.use_layer_norm = bool(use_layer_norm)
        self.supports_masking = True

    def build(self, input_shape):
        shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape]
        width = 0
        for shape in shapes:
            if shape[-1] is None:
                raise ValueError("FusionBlock: every input's last dimension must be known.")
            width += int(shape[-1])
        base = tuple(shapes[0][:-1])
        self.projection.build(base + (width,))
        if self.norm is not None:
            self.norm.build(base + (self.units,))

    def call(self, inputs, training=None):
        tensors = _as_list(inputs)
        x = tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis=-1)
        x = self.projection(x)
        if self.norm is not None:
            x = self.norm(x)
        x = self.activation_fn(x)
        return self.dropout_layer(x, training=training)

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def compute_output_shape(self, input_shape):
        shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape]
        return tuple(shapes[0][:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "dropout": self.dropout,
                "activation": self.activation,
                "use_layer_norm": self.use_layer_norm,
            }
        )
        return config
