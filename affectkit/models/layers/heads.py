"""Task heads: from shared features to one task's outputs.

- `MLPHead`: optional dropout and hidden dense layers, then the output layer. It is the
  dense head of MTANet (Zhang & Gu 2020), the dropout-dense branches of Do et al. (2020),
  the per-frame MLP of Liu et al. (2023) and the dropout-dense classifier of Phan et al.
  (2022), which differ only in their hyperparameters.
- `PerTokenClassifier`: one classifier per token, on the first K tokens (Haider et al. 2022:
  AU k is read from region token k).

Output layers compute in float32, so heads stay float32 under mixed precision.
"""

import keras


@keras.saving.register_keras_serializable(package="affectkit")
class MLPHead(keras.layers.Layer):
    """`Dropout(input_dropout)`, then per hidden width `Dense(relu)` + `Dropout(dropout)`,
    then `Dense(units, activation)` in float32.

    Works on vectors `(B, D)` and on sequences `(B, T, D)` (per frame).

    Paper settings:
    - MTANet (Zhang & Gu 2020): `hidden_units=()`, no dropout.
    - Do et al. 2020: `input_dropout=0.1, hidden_units=(512, 512), dropout=0.1`.
    - Liu et al. 2023: `hidden_units=(512, 256), dropout=0.3`.
    - Phan et al. 2022: `input_dropout=0.5`, no hidden layer.

    Args:
        units: output width.
        activation: output activation (`None`, `"softmax"`, `"sigmoid"`, `"tanh"`, ...).
        hidden_units: widths of the hidden layers. Defaults to none.
        dropout: dropout after each hidden layer. Defaults to 0.
        input_dropout: dropout on the input. Defaults to 0.
        hidden_activation: activation of the hidden layers. Defaults to `"relu"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    features = keras.Input((1024,))
    expr = MLPHead(7, activation="softmax", name="expr")(features)       # (None, 7)
    ```
    """

    def __init__(self, units, activation=None, hidden_units=(), dropout=0.0, input_dropout=0.0,
                 hidden_activation="relu", **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.input_dropout_layer = keras.layers.Dropout(float(input_dropout), name="input_dropout")
        self.hidden = []
        for i, width in enumerate(hidden_units):
            self.hidden.append(keras.layers.Dense(int(width), activation=hidden_activation,
                                                  name=f"hidden_{i}"))
            self.hidden.append(keras.layers.Dropout(float(dropout), name=f"hidden_{i}_dropout"))
        self.output_dense = keras.layers.Dense(int(units), activation=activation,
                                               dtype="float32", name="output")
        # === Config ===
        self.units = int(units)
        self.activation = activation
        self.hidden_units = tuple(int(w) for w in hidden_units)
        self.dropout = float(dropout)
        self.input_dropout = float(input_dropout)
        self.hidden_activation = hidden_activation
        self.supports_masking = True

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden:
            if isinstance(layer, keras.layers.Dense):
                layer.build(shape)
                shape = shape[:-1] + (layer.units,)
        self.output_dense.build(shape)

    def call(self, inputs, training=None):
        x = self.input_dropout_layer(inputs, training=training)
        for layer in self.hidden:
            x = layer(x, training=training) if isinstance(layer, keras.layers.Dropout) else layer(x)
        return self.output_dense(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units,
            "activation": self.activation,
            "hidden_units": list(self.hidden_units),
            "dropout": self.dropout,
            "input_dropout": self.input_dropout,
            "hidden_activation": self.hidden_activation,
        })
        return config


@keras.saving.register_keras_serializable(package="affectkit")
class PerTokenClassifier(keras.layers.Layer):
    """One classifier per token: output k is `activation(w_k . token_k + b_k)`, k < `units`.

    Haider et al. (ABAW4 2022), after the ABAW3 winner: the first 12 of the 17 encoded
    region tokens are the labelled AUs' regions, and AU k's classifier is its own weight
    vector and bias on token k. Tokens past `units` (the hidden AUs) feed no output.

    Args:
        units: number of outputs K (the first K tokens are read).
        activation: output activation. Defaults to `"sigmoid"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    tokens = keras.Input((17, 16))
    au = PerTokenClassifier(12, name="au")(tokens)                       # (None, 12)
    ```
    """

    def __init__(self, units, activation="sigmoid", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        # === Config ===
        self.units = int(units)
        self.activation = activation
        self.activation_fn = keras.activations.get(activation)

    def build(self, input_shape):
        tokens, width = input_shape[-2], input_shape[-1]
        if tokens is not None and tokens < self.units:
            raise ValueError(
                f"PerTokenClassifier: {tokens} tokens for {self.units} outputs; expected at "
                "least one token per output."
            )
        self.kernel = self.add_weight(shape=(self.units, int(width)),
                                      initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs):
        tokens = keras.ops.cast(inputs[:, : self.units], self.compute_dtype)
        logits = keras.ops.einsum("bkt,kt->bk", tokens, self.kernel) + self.bias
        return self.activation_fn(logits)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "activation": self.activation})
        return config
