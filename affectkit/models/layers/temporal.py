"""Temporal blocks of the papers, over per-frame features.

- `StatBiLSTMFusion`: STAT + BiLSTM over a window of previous frames, fused with the current
  frame (Do et al., FG 2020).
- `ConcatAttentionTransformer`: per frame, [features, self-attention, transformer encoder]
  (Phan et al., ABAW3 2022).

Liu et al.'s (ABAW5 2023) segment encoders are `SegmentLSTM` (state carried across
segments, `affectkit.models.layers.recurrent`) and `TransformerEncoder` with the segment's
padding mask (`affectkit.models.layers.transformer`).
"""

import keras
from keras import ops

from affectkit.models.layers.recurrent import StackedBiLSTM
from affectkit.models.layers.stat_pooling import StatPooling
from affectkit.models.layers.transformer import SelfAttentionBlock, TransformerEncoder


@keras.saving.register_keras_serializable(package="affectkit")
class StatBiLSTMFusion(keras.layers.Layer):
    """Do et al.'s temporal module: statistics and a BiLSTM over the window's probabilities,
    fused with the current frame.

    Do, Nguyen-Quynh & Kim, "Affective Expression Analysis in-the-wild using Multi-Task
    Temporal Statistical Deep Learning Model" (FG 2020), Sec. II-C, Fig. 2. Over the window
    of per-frame class probabilities `(B, s, C)` (oldest first, the current frame last):
    STAT = [max, min, mean] over time, and 1 or 2 bidirectional LSTM layers. The output
    concatenates `[STAT, LSTM, current feature, current probabilities]`. The paper's six
    Table I models switch STAT and the LSTM on and off (`stat`, `lstm`; both off is the
    image-only model, which reads only the current frame).

    Call arguments:
        inputs: dict with `feature` `(B, D)` (the current frame's face feature) and
            `probabilities` `(B, s, C)`.

    Args:
        stat: include the STAT module. Defaults to True.
        lstm: include the BiLSTM module. Defaults to True.
        lstm_units: units per direction (1024 in the paper).
        lstm_layers: bidirectional layers, 1 or 2.
        lstm_dropout: LSTM input dropout (0.1).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    feature, probabilities = keras.Input((2048,)), keras.Input((16, 7))
    fused = StatBiLSTMFusion()({"feature": feature, "probabilities": probabilities})
    # (None, 21 + 2048 + 2048 + 7)
    ```
    """

    def __init__(self, stat=True, lstm=True, lstm_units=1024, lstm_layers=1, lstm_dropout=0.1,
                 **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.stat_pooling = StatPooling(name="stat") if stat else None
        self.bilstm = (StackedBiLSTM(units=int(lstm_units), num_layers=int(lstm_layers),
                                     dropout=float(lstm_dropout), name="lstm")
                       if lstm else None)
        # === Config ===
        self.stat = bool(stat)
        self.lstm = bool(lstm)
        self.lstm_units = int(lstm_units)
        self.lstm_layers = int(lstm_layers)
        self.lstm_dropout = float(lstm_dropout)

    def build(self, input_shape):
        if self.bilstm is not None:
            self.bilstm.build(input_shape["probabilities"])

    def call(self, inputs, training=None):
        probabilities = inputs["probabilities"]
        parts = []
        if self.stat_pooling is not None:
            parts.append(self.stat_pooling(probabilities))
        if self.bilstm is not None:
            parts.append(self.bilstm(probabilities, training=training))
        parts += [ops.cast(inputs["feature"], probabilities.dtype), probabilities[:, -1]]
        return ops.concatenate(parts, axis=-1)

    def compute_output_shape(self, input_shape):
        classes = input_shape["probabilities"][-1]
        width = input_shape["feature"][-1] + classes
        width += 3 * classes if self.stat else 0
        width += 2 * self.lstm_units if self.lstm else 0
        return (input_shape["feature"][0], width)

    def get_config(self):
        config = super().get_config()
        config.update({"stat": self.stat, "lstm": self.lstm, "lstm_units": self.lstm_units,
                       "lstm_layers": self.lstm_layers, "lstm_dropout": self.lstm_dropout})
        return config


@keras.saving.register_keras_serializable(package="affectkit")
class ConcatAttentionTransformer(keras.layers.Layer):
    """Per frame, the features concatenated with a self-attention and a transformer view.

    Phan, Huynh, Nguyen & Kim, "Expression Classification using Concatenation of Deep Neural
    Network for the 3rd ABAW3 Competition" (CVPRW 2022), Fig. 2: over a sequence of backbone
    features `(B, T, D)`, multi-head self-attention without residual (`SelfAttentionBlock`)
    and a pre-norm transformer encoder (vit-pytorch's `Transformer`: GELU MLP, no
    positional encoding) run side by side; the output is `[x, attention(x), transformer(x)]`,
    `(B, T, 3 D)`.

    Args:
        attention_heads, attention_head_dim, attention_dropout: the self-attention block
            (2, 64, 0 in the paper).
        transformer_layers, transformer_heads, transformer_head_dim, transformer_mlp_dim,
            transformer_dropout, transformer_activation: the encoder (1, 2, 64, 512, 0,
            "gelu").
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    frames = keras.Input((64, 888))
    x = ConcatAttentionTransformer()(frames)            # (None, 64, 2664)
    ```
    """

    def __init__(self, attention_heads=2, attention_head_dim=64, attention_dropout=0.0,
                 transformer_layers=1, transformer_heads=2, transformer_head_dim=64,
                 transformer_mlp_dim=512, transformer_dropout=0.0, transformer_activation="gelu",
                 **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.attention = SelfAttentionBlock(
            num_heads=int(attention_heads), head_dim=int(attention_head_dim),
            dropout=float(attention_dropout), name="attention",
        )
        self.transformer = TransformerEncoder(
            num_layers=int(transformer_layers), num_heads=int(transformer_heads),
            head_dim=int(transformer_head_dim), mlp_dim=int(transformer_mlp_dim),
            dropout=float(transformer_dropout), activation=transformer_activation,
            norm_first=True, positional_encoding=False, name="transformer",
        )
        # === Config ===
        self.attention_heads = int(attention_heads)
        self.attention_head_dim = int(attention_head_dim)
        self.attention_dropout = float(attention_dropout)
        self.transformer_layers = int(transformer_layers)
        self.transformer_heads = int(transformer_heads)
        self.transformer_head_dim = int(transformer_head_dim)
        self.transformer_mlp_dim = int(transformer_mlp_dim)
        self.transformer_dropout = float(transformer_dropout)
        self.transformer_activation = transformer_activation

    def build(self, input_shape):
        self.attention.build(input_shape)
        self.transformer.build(input_shape)

    def call(self, inputs, training=None):
        return ops.concatenate(
            [inputs, self.attention(inputs, training=training),
             self.transformer(inputs, training=training)], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3 * input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update({
            "attention_heads": self.attention_heads,
            "attention_head_dim": self.attention_head_dim,
            "attention_dropout": self.attention_dropout,
            "transformer_layers": self.transformer_layers,
            "transformer_heads": self.transformer_heads,
            "transformer_head_dim": self.transformer_head_dim,
            "transformer_mlp_dim": self.transformer_mlp_dim,
            "transformer_dropout": self.transformer_dropout,
            "transformer_activation": self.transformer_activation,
        })
        return config
