"""Transformer blocks over token or frame sequences `(batch, time, width)`.

- `SinusoidalPositionEncoding`: Vaswani et al. (2017) fixed positions, added to the input.
- `TransformerEncoderLayer`: one encoder layer, pre-norm or post-norm, optional padding mask.
- `TransformerEncoder`: a stack of them with optional positions (Liu et al. 2023, Phan et al.
  2022, Haider et al. 2022).
- `SelfAttentionBlock`: multi-head self-attention without residual (Phan et al. 2022).

Padding masks are boolean `(batch, time)` tensors, True for valid steps. They come either
from Keras masking (a `Masking` layer upstream) or as the `mask=` call argument.
"""

import keras
import numpy as np
from keras import ops


def sinusoidal_table(length, width, base=10000.0):
    """The `(length, width)` table of Vaswani et al. (2017), section 3.5:
    `PE[p, 2i] = sin(p / base^(2i / width))`, `PE[p, 2i + 1] = cos(p / base^(2i / width))`."""
    positions = np.arange(length, dtype="float64")[:, None]
    even = np.arange(0, width, 2, dtype="float64")
    angles = positions / np.power(base, even / width)
    table = np.zeros((length, width), dtype="float64")
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : width // 2])
    return table.astype("float32")


def _key_padding_mask(mask):
    """(batch, time) valid-step mask -> (batch, time, time) attention mask over keys."""
    mask = ops.cast(mask, "bool")
    return ops.logical_and(ops.expand_dims(mask, 1), ops.expand_dims(ops.ones_like(mask), 2))


@keras.saving.register_keras_serializable(package="affectkit")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Adds fixed sinusoidal position encodings to a sequence `(batch, time, width)`.

    Vaswani et al., "Attention Is All You Need" (NeurIPS 2017), section 3.5, with sines on
    even and cosines on odd channels (as the `PositionalEncoding` of the ABAW3 winner's code
    that Haider et al. 2022 build on). The table is not a weight: it is recomputed from the
    config.

    Args:
        max_length: the longest sequence accepted. Defaults to 2048.
        base: the wavelength base. Defaults to 10000.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    tokens = keras.Input((17, 16))
    tokens = SinusoidalPositionEncoding(max_length=64)(tokens)
    ```
    """

    def __init__(self, max_length=2048, base=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)
        self.base = float(base)
        self.supports_masking = True
        self._table = None

    def build(self, input_shape):
        length, width = input_shape[-2], input_shape[-1]
        if width is None:
            raise ValueError("SinusoidalPositionEncoding: the last (width) dimension must be known.")
        if length is not None and length > self.max_length:
            raise ValueError(
                f"SinusoidalPositionEncoding: sequence length {length} exceeds "
                f"max_length={self.max_length}."
            )
        self._table = sinusoidal_table(self.max_length, int(width), self.base)

    def call(self, inputs):
        length = ops.shape(inputs)[-2]
        table = ops.convert_to_tensor(self._table, dtype=self.compute_dtype)
        return inputs + ops.cast(table[:length], inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_length": self.max_length, "base": self.base})
        return config


@keras.saving.register_keras_serializable(package="affectkit")
class TransformerEncoderLayer(keras.layers.Layer):
    """One transformer encoder layer: multi-head self-attention and an MLP, each with a
    residual connection and LayerNormalization.

    Post-norm (`norm_first=False`, Vaswani et al. 2017; PyTorch's default):
        `x = norm1(x + drop(attn(x)))`, `x = norm2(x + drop(mlp(x)))`.
    Pre-norm (`norm_first=True`, as in ViT and Phan et al. 2022):
        `x = x + drop(attn(norm1(x)))`, `x = x + drop(mlp(norm2(x)))`.
    `mlp(x) = Dense(width)(drop(act(Dense(mlp_dim)(x))))`. `dropout` is also the attention
    probability dropout (as in PyTorch's `nn.TransformerEncoderLayer`). The attention output
    is projected back to the input width, so `num_heads * head_dim` need not equal it.

    Call arguments:
        inputs: `(batch, time, width)`.
        mask: optional boolean `(batch, time)`, True for valid steps; padded steps are never
            attended to. A Keras mask from upstream is used the same way.
        training: Keras training flag.

    Args:
        num_heads: attention heads.
        head_dim: width of each head's queries, keys and values (Keras `key_dim`).
        mlp_dim: hidden width of the MLP.
        dropout: dropout rate. Defaults to 0.1.
        activation: MLP activation, "relu" or "gelu" (or any Keras activation name).
            Defaults to "relu".
        norm_first: pre-norm if True, post-norm if False. Defaults to False.
        epsilon: LayerNormalization epsilon. Defaults to 1e-5 (PyTorch's).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    frames = keras.Input((64, 888))
    encoded = TransformerEncoderLayer(2, 64, 512, dropout=0.0, activation="gelu",
                                      norm_first=True)(frames)        # (None, 64, 888)
    ```
    """

    def __init__(
        self,
        num_heads,
        head_dim,
        mlp_dim,
        dropout=0.1,
        activation="relu",
        norm_first=False,
        epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Layers.
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=int(num_heads),
            key_dim=int(head_dim),
            dropout=float(dropout),
            name="attention",
        )
        self.attention_norm = keras.layers.LayerNormalization(epsilon=float(epsilon), name="attention_norm")
        self.attention_dropout = keras.layers.Dropout(float(dropout), name="attention_dropout")
        self.mlp_norm = keras.layers.LayerNormalization(epsilon=float(epsilon), name="mlp_norm")
        self.mlp_hidden = keras.layers.Dense(int(mlp_dim), activation=activation, name="mlp_hidden")
        self.mlp_hidden_dropout = keras.layers.Dropout(float(dropout), name="mlp_hidden_dropout")
        self.mlp_output = None  # width known in build()
        self.mlp_dropout = keras.layers.Dropout(float(dropout), name="mlp_dropout")
        # Config.
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        self.activation = activation
        self.norm_first = bool(norm_first)
        self.epsilon = float(epsilon)
        self.supports_masking = True

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        width = input_shape[-1]
        if width is None:
            raise ValueError("TransformerEncoderLayer: the last (width) dimension must be known.")
        self.mlp_output = keras.layers.Dense(int(width), name="mlp_output")
        self.attention.build(input_shape, input_shape)
        self.attention_norm.build(input_shape)
        self.mlp_norm.build(input_shape)
        self.mlp_hidden.build(input_shape)
        self.mlp_output.build(input_shape[:-1] + (self.mlp_dim,))

    def _attend(self, x, attention_mask, training):
        y = self.attention(x, x, attention_mask=attention_mask, training=training)
        return self.attention_dropout(y, training=training)

    def _mlp(self, x, training):
        y = self.mlp_hidden(x)
        y = self.mlp_hidden_dropout(y, training=training)
        y = self.mlp_output(y)
        return self.mlp_dropout(y, training=training)

    def call(self, inputs, mask=None, training=None):
        attention_mask = None if mask is None else _key_padding_mask(mask)
        x = inputs
        if self.norm_first:
            x = x + self._attend(self.attention_norm(x), attention_mask, training)
            x = x + self._mlp(self.mlp_norm(x), training)
        else:
            x = self.attention_norm(x + self._attend(x, attention_mask, training))
            x = self.mlp_norm(x + self._mlp(x, training))
        return x

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "mlp_dim": self.mlp_dim,
                "dropout": self.dropout,
                "activation": self.activation,
                "norm_first": self.norm_first,
                "epsilon": self.epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="affectkit")
class TransformerEncoder(keras.layers.Layer):
    """A stack of `TransformerEncoderLayer`s, with optional sinusoidal positions.

    Paper settings:
    - Liu et al. 2023 (ABAW5): `num_layers=4, num_heads=4`, width 1024 (set by the
      `FusionBlock` before it), `dropout=0.3`, segments of 128 frames.
    - Phan et al. 2022 (ABAW3): `num_layers=1, num_heads=2, head_dim=64, mlp_dim=512,
      dropout=0.0, norm_first=True`, no positional encoding.
    - Haider et al. 2022 (ABAW4, on the ABAW3 winner's code): `num_layers=1, num_heads=8,
      head_dim=2` (16-wide tokens), `mlp_dim=1024, activation="gelu", norm_first=False`,
      `positional_encoding=True, positional_dropout=0.3`; the winner's code leaves the
      encoder layer's own dropout at PyTorch's default 0.1.

    Call arguments:
        inputs: `(batch, time, width)`.
        mask: optional boolean `(batch, time)` padding mask (True = valid), or a Keras mask.
        training: Keras training flag.

    Args:
        num_layers: number of encoder layers.
        num_heads, head_dim, mlp_dim, dropout, activation, norm_first, epsilon: as in
            `TransformerEncoderLayer`, shared by all layers.
        positional_encoding: add `SinusoidalPositionEncoding` first. Defaults to False.
        max_length: longest sequence for the positions. Defaults to 2048.
        positional_dropout: dropout right after adding positions. Defaults to 0.
        final_norm: a LayerNormalization after the last layer (usual with pre-norm stacks,
            e.g. ViT). Defaults to False.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    fused = keras.Input((128, 1024))
    encoded = TransformerEncoder(4, num_heads=4, head_dim=256, mlp_dim=2048,
                                 dropout=0.3)(fused)                  # (None, 128, 1024)
    ```
    """

    def __init__(
        self,
        num_layers,
        num_heads,
        head_dim,
        mlp_dim,
        dropout=0.1,
        activation="relu",
        norm_first=False,
        positional_encoding=False,
        max_length=2048,
        positional_dropout=0.0,
        final_norm=False,
        epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Layers.
        self.position_encoding = (
            SinusoidalPositionEncoding(max_length=int(max_length), name="position_encoding")
            if positional_encoding
            else None
        )
        self.position_dropout = keras.layers.Dropout(float(positional_dropout), name="position_dropout")
        self.encoder_layers = [
            TransformerEncoderLayer(
                num_heads=num_heads,
                head_dim=head_dim,
                mlp_dim=mlp_dim,
                dropout=dropout,
                activation=activation,
                norm_first=norm_first,
                epsilon=epsilon,
                name=f"encoder_layer_{i}",
            )
            for i in range(int(num_layers))
        ]
        self.output_norm = (
            keras.layers.LayerNormalization(epsilon=float(epsilon), name="output_norm")
            if final_norm
            else None
        )
        # Config.
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        self.activation = activation
        self.norm_first = bool(norm_first)
        self.positional_encoding = bool(positional_encoding)
        self.max_length = int(max_length)
        self.positional_dropout = float(positional_dropout)
        self.final_norm = bool(final_norm)
        self.epsilon = float(epsilon)
        self.supports_masking = True

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if self.position_encoding is not None:
            self.position_encoding.build(input_shape)
        for layer in self.encoder_layers:
            layer.build(input_shape)
        if self.output_norm is not None:
            self.output_norm.build(input_shape)

    def call(self, inputs, mask=None, training=None):
        x = inputs
        if self.position_encoding is not None:
            x = self.position_encoding(x)
        x = self.position_dropout(x, training=training)
        for layer in self.encoder_layers:
            x = layer(x, mask=mask, training=training)
        if self.output_norm is not None:
            x = self.output_norm(x)
        return x

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "mlp_dim": self.mlp_dim,
                "dropout": self.dropout,
                "activation": self.activation,
                "norm_first": self.norm_first,
                "positional_encoding": self.positional_encoding,
                "max_length": self.max_length,
                "positional_dropout": self.positional_dropout,
                "final_norm": self.final_norm,
                "epsilon": self.epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="affectkit")
class SelfAttentionBlock(keras.layers.Layer):
    """Multi-head self-attention with no residual and no normalization.

    The "Attention" branch of Phan et al., "Expression Classification using Concatenation of
    Deep Neural Network for the 3rd ABAW3 Competition" (CVPRW 2022): 2 heads of width 64 over
    the 64-frame sequence of RegNet features; the heads are concatenated and "linearly
    transformed with the expected dimension", i.e. projected back to the input width (888),
    so the result can be concatenated per frame with the backbone and transformer features.

    Call arguments:
        inputs: `(batch, time, width)`.
        mask: optional boolean `(batch, time)` padding mask (True = valid), or a Keras mask.
        training: Keras training flag.

    Args:
        num_heads: attention heads. Defaults to 2.
        head_dim: width of each head. Defaults to 64.
        dropout: attention-probability dropout. Defaults to 0.
        output_dim: output width; None (default) means the input width.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    frames = keras.Input((64, 888))
    attended = SelfAttentionBlock(num_heads=2, head_dim=64)(frames)   # (None, 64, 888)
    ```
    """

    def __init__(self, num_heads=2, head_dim=64, dropout=0.0, output_dim=None, **kwargs):
        super().__init__(**kwargs)
        # Layers.
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=int(num_heads),
            key_dim=int(head_dim),
            dropout=float(dropout),
            output_shape=None if output_dim is None else int(output_dim),
            name="attention",
        )
        # Config.
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)
        self.dropout = float(dropout)
        self.output_dim = None if output_dim is None else int(output_dim)
        self.supports_masking = True

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.attention.build(input_shape, input_shape)

    def call(self, inputs, mask=None, training=None):
        attention_mask = None if mask is None else _key_padding_mask(mask)
        return self.attention(inputs, inputs, attention_mask=attention_mask, training=training)

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        width = input_shape[-1] if self.output_dim is None else self.output_dim
        return tuple(input_shape[:-1]) + (width,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "dropout": self.dropout,
                "output_dim": self.output_dim,
            }
        )
        return config
