"""Recurrent blocks over per-frame feature sequences `(batch, time, features)`.

- `StackedBiLSTM`: one or more bidirectional LSTM layers (Do et al. 2020).
- `SegmentLSTM` and `run_segments`: an LSTM whose state is carried from one video segment to
  the next (Liu et al. 2023, eq. 2).
"""

import keras
from keras import ops


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
