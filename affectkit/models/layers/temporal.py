"""Temporal blocks over per-frame feature sequences `(batch, time, features)`.

- `StatPooling`: max, min and mean over time (the "STAT" module of Do et al. 2020).
- `StackedBiLSTM`: one or more bidirectional LSTM layers (Do et al. 2020).
- `SegmentLSTM` and `run_segments`: an LSTM whose state is carried from one video segment to
  the next (Liu et al. 2023, eq. 2).
- `FusionBlock`: concatenate per-frame features of several modalities and project them to the
  model width (Liu et al. 2023, eq. 1).
"""

import keras
import numpy as np
from keras import ops


def _as_list(inputs):
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


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


@keras.saving.register_keras_serializable(package="affectkit")
class StackedBiLSTM(keras.layers.Layer):
    """One or more bidirectional LSTM layers, outputs of both directions concatenated.

    The LSTM module of Do et al. (FG 2020): 1 or 2 bidirectional LSTM layers of 1024 units
    over the window of per-frame probability vectors, dropout 0.1. Every layer but the last
    returns sequences; the last returns `(batch, 2 * units)` or, with
    `return_sequences=True`, `(batch, time, 2 * units)`. Keras masks are honoured.

    Args:
        units: LSTM units per direction. Defaults to 1024.
        num_layers: number of bidirectional layers. Defaults to 1.
        dropout: input dropout of every LSTM (Keras `LSTM(dropout=...)`). Defaults to 0.1.
        return_sequences: whether the last layer returns the whole sequence.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    probs = keras.Input((32, 7))
    summary = StackedBiLSTM(units=1024, num_layers=2)(probs)   # (None, 2048)
    ```
    """

    def __init__(self, units=1024, num_layers=1, dropout=0.1, return_sequences=False, **kwargs):
        super().__init__(**kwargs)
        if int(num_layers) < 1:
            raise ValueError(f"StackedBiLSTM: `num_layers` must be >= 1; got {num_layers!r}.")
        # Layers.
        self.bilstms = [
            keras.layers.Bidirectional(
                keras.layers.LSTM(
                    int(units),
                    dropout=float(dropout),
                    return_sequences=bool(return_sequences) or i < int(num_layers) - 1,
                    name=f"lstm_{i}",
                ),
                merge_mode="concat",
                name=f"bilstm_{i}",
            )
            for i in range(int(num_layers))
        ]
        # Config.
        self.units = int(units)
        self.num_layers = int(num_layers)
        self.dropout = float(dropout)
        self.return_sequences = bool(return_sequences)
        self.supports_masking = True

    def build(self, input_shape):
        shape = tuple(input_shape)
        for bilstm in self.bilstms:
            bilstm.build(shape)
            shape = shape[:-1] + (2 * self.units,)

    def call(self, inputs, mask=None, training=None):
        x = inputs
        for bilstm in self.bilstms:
            x = bilstm(x, mask=mask, training=training)
        return x

    def compute_mask(self, inputs, mask=None):
        return mask if self.return_sequences else None

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return tuple(input_shape[:-1]) + (2 * self.units,)
        return (input_shape[0], 2 * self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "num_layers": self.num_layers,
                "dropout": self.dropout,
                "return_sequences": self.return_sequences,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="affectkit")
class SegmentLSTM(keras.layers.Layer):
    """An LSTM over one segment of a video that starts from a given state and returns its
    final state, so that state can be carried to the next segment.

    Liu et al., "Multi-modal Expression Recognition with Ensemble Method" (ABAW5, CVPRW 2023),
    eq. 2: `g_i, h_i = LSTM(f_i, h_{i-1})` with `h_0 = 0` and non-overlapping segments
    (stride = segment length). Both the hidden and the cell state are carried. Chaining the
    layer over consecutive segments gives exactly one pass over the whole video; see
    `run_segments`.

    Call arguments:
        inputs: the segment `(batch, time, features)`, or a list
            `[segment, state_h, state_c]` (this form is what a functional model with state
            inputs uses).
        initial_state: optional `[state_h, state_c]`, each `(batch, units)`. Zeros if omitted.

    Returns:
        `(sequence_output, state_h, state_c)`: `(batch, time, units)`, `(batch, units)`,
        `(batch, units)`.

    Args:
        units: LSTM units.
        dropout: input dropout of the LSTM. Defaults to 0.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    lstm = SegmentLSTM(256)
    seq, h, c = lstm(segment_1)
    seq_2, h, c = lstm(segment_2, initial_state=[h, c])
    outputs, (h, c) = run_segments(lstm, video_features, segment_length=64)
    ```
    """

    def __init__(self, units, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        # Layers.
        self.lstm = keras.layers.LSTM(
            int(units),
            dropout=float(dropout),
            return_sequences=True,
            return_state=True,
            name="lstm",
        )
        # Config.
        self.units = int(units)
        self.dropout = float(dropout)

    def build(self, input_shape):
        segment_shape = input_shape[0] if isinstance(input_shape[0], (list, tuple)) else input_shape
        self.lstm.build(tuple(segment_shape))

    def call(self, inputs, initial_state=None, training=None):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) not in (1, 3):
                raise ValueError(
                    "SegmentLSTM: a list input must be [segment] or [segment, state_h, "
                    f"state_c]; got {len(inputs)} tensors."
                )
            segment = inputs[0]
            if len(inputs) == 3:
                initial_state = [inputs[1], inputs[2]]
        else:
            segment = inputs
        if initial_state is not None:
            initial_state = list(initial_state)
        sequence, state_h, state_c = self.lstm(
            segment, initial_state=initial_state, training=training
        )
        return sequence, state_h, state_c

    def compute_output_shape(self, input_shape):
        segment_shape = input_shape[0] if isinstance(input_shape[0], (list, tuple)) else input_shape
        batch, time = segment_shape[0], segment_shape[1]
        return (batch, time, self.units), (batch, self.units), (batch, self.units)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "dropout": self.dropout})
        return config


def run_segments(layer, sequence, segment_length, initial_state=None, training=None):
    """Runs a `SegmentLSTM` over a long sequence segment by segment, carrying its state.

    Splits `sequence` `(batch, time, features)` into consecutive, non-overlapping segments of
    `segment_length` steps (the last may be shorter), feeds segment `i` with the final state of
    segment `i - 1` (zeros, or `initial_state`, for the first) and concatenates the outputs.
    `time` must be known (static) when called on symbolic tensors.

    Returns:
        `(outputs, [state_h, state_c])`: outputs `(batch, time, units)` and the final state.
    """
    segment_length = int(segment_length)
    if segment_length < 1:
        raise ValueError(f"run_segments: `segment_length` must be >= 1; got {segment_length}.")
    length = sequence.shape[1]
    if length is None:
        raise ValueError("run_segments: the sequence's time dimension must be known.")
    state = None if initial_state is None else list(initial_state)
    outputs = []
    for start in range(0, int(length), segment_length):
        segment = sequence[:, start : start + segment_length]
        out, state_h, state_c = layer(segment, initial_state=state, training=training)
        outputs.append(out)
        state = [state_h, state_c]
    merged = outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=1)
    return merged, state


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
