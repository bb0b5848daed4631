"""Necks: from a backbone's feature map to the features the heads read.

- `AvgMaxNeck`: average- and max-pooled 1x1 branches (Zhang & Gu, MTANet, ABAW 2020).
- `RegionTokenNeck`: region attention tokens and a transformer over them (Haider et al.,
  ABAW4 2022, on the ABAW3 multi-task winner's design).
"""

import keras
from keras import ops

from affectkit.models.layers.region_attention import RegionAttention
from affectkit.models.layers.transformer import TransformerEncoder


@keras.saving.register_keras_serializable(package="affectkit")
class AvgMaxNeck(keras.layers.Layer):
    """MTANet's neck: two branches over the feature map, average- and max-pooled.

    Each branch is Dropout -> 1x1 convolution to `width` -> LeakyReLU -> global pooling
    (average in one, max in the other); the two vectors are concatenated, `(B, 2 * width)`.
    Zhang & Gu, "Facial Affect Recognition in the Wild Using Multi-Task Learning
    Convolutional Network" (MTANet, ABAW 2020), as in the authors' code: 2048 -> 512 per
    branch, 1024 in all, dropout 0.5.

    Args:
        width: channels of each branch's 1x1 convolution. Defaults to 512.
        dropout: dropout rate before each convolution. Defaults to 0.5.
        negative_slope: LeakyReLU slope. Defaults to 0.01 (PyTorch's).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    feature_map = keras.Input((4, 4, 2048))
    features = AvgMaxNeck(width=512)(feature_map)      # (None, 1024)
    ```
    """

    def __init__(self, width=512, dropout=0.5, negative_slope=0.01, **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.avg_dropout = keras.layers.Dropout(float(dropout), name="avg_dropout")
        self.avg_conv = keras.layers.Conv2D(int(width), 1, name="avg_conv")
        self.max_dropout = keras.layers.Dropout(float(dropout), name="max_dropout")
        self.max_conv = keras.layers.Conv2D(int(width), 1, name="max_conv")
        # === Config ===
        self.width = int(width)
        self.dropout = float(dropout)
        self.negative_slope = float(negative_slope)

    def build(self, input_shape):
        self.avg_conv.build(input_shape)
        self.max_conv.build(input_shape)

    def call(self, inputs, training=None):
        avg = self.avg_conv(self.avg_dropout(inputs, training=training))
        avg = ops.mean(ops.leaky_relu(avg, self.negative_slope), axis=(1, 2))
        mx = self.max_conv(self.max_dropout(inputs, training=training))
        mx = ops.max(ops.leaky_relu(mx, self.negative_slope), axis=(1, 2))
        return ops.concatenate([avg, mx], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * self.width)

    def get_config(self):
        config = super().get_config()
        config.update({"width": self.width, "dropout": self.dropout,
                       "negative_slope": self.negative_slope})
        return config


@keras.saving.register_keras_serializable(package="affectkit")
class RegionTokenNeck(keras.layers.Layer):
    """Region tokens of a feature map, encoded by a transformer, and their pooled summary.

    Haider et al., "An Ensemble Approach for Multiple Emotion Descriptors Estimation Using
    Multi-task Learning" (ABAW4 2022), after the ABAW3 multi-task winner: `RegionAttention`
    gives R tokens (one per AU region, 12 labelled and 5 hidden AUs in the paper); one
    transformer encoder layer (sinusoidal positions, post-norm, GELU) encodes them; the
    expression and VA heads read the average of a bias-free per-token projection of the
    tokens *before* the transformer.

    Returns a dict:
        `features` `(B, token_width)`: the pooled per-token projections (expression, VA);
        `tokens` `(B, R, token_width)`: the encoded tokens (one AU classifier per token);
        `attention` `(B, H, W, R)`: the region attention maps in [0, 1].

    Args:
        num_regions: R. Defaults to 17.
        stem_channels, token_width, embed_channels: as in `RegionAttention`.
        transformer_heads: attention heads (8 in the paper; token_width must divide).
        transformer_mlp_dim: feed-forward width (1024).
        transformer_dropout: the encoder layer's dropout (PyTorch's default 0.1 in the
            winner's code).
        position_dropout: dropout after adding the positions (0.3).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    mixed7 = keras.Input((17, 17, 768))
    out = RegionTokenNeck(num_regions=17)(mixed7)
    out["features"], out["tokens"]            # (None, 16), (None, 17, 16)
    ```
    """

    def __init__(
        self,
        num_regions=17,
        stem_channels=68,
        token_width=16,
        embed_channels=16,
        transformer_heads=8,
        transformer_mlp_dim=1024,
        transformer_dropout=0.1,
        position_dropout=0.3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_regions, token_width = int(num_regions), int(token_width)
        if token_width % int(transformer_heads):
            raise ValueError(
                f"RegionTokenNeck: token_width={token_width} is not divisible by "
                f"transformer_heads={transformer_heads}; each head attends over "
                "token_width / heads channels (16 / 8 = 2 in the paper)."
            )
        # === Layers ===
        self.region_attention = RegionAttention(
            num_regions=num_regions, stem_channels=int(stem_channels), token_width=token_width,
            embed_channels=int(embed_channels), return_attention=True, name="region_attention",
        )
        self.transformer = TransformerEncoder(
            num_layers=1, num_heads=int(transformer_heads),
            head_dim=token_width // int(transformer_heads), mlp_dim=int(transformer_mlp_dim),
            dropout=float(transformer_dropout), activation="gelu", norm_first=False,
            positional_encoding=True, max_length=num_regions,
            positional_dropout=float(position_dropout), name="region_transformer",
        )
        self.projection = keras.layers.EinsumDense(
            "brt,rtu->bru", output_shape=(num_regions, token_width), name="projection"
        )
        # === Config ===
        self.num_regions = num_regions
        self.stem_channels = int(stem_channels)
        self.token_width = token_width
        self.embed_channels = int(embed_channels)
        self.transformer_heads = int(transformer_heads)
        self.transformer_mlp_dim = int(transformer_mlp_dim)
        self.transformer_dropout = float(transformer_dropout)
        self.position_dropout = float(position_dropout)

    def build(self, input_shape):
        tokens = (input_shape[0], self.num_regions, self.token_width)
        self.region_attention.build(input_shape)
        self.transformer.build(tokens)
        self.projection.build(tokens)

    def call(self, inputs, training=None):
        tokens, maps = self.region_attention(inputs, training=training)
        encoded = self.transformer(tokens, training=training)
        pooled = ops.mean(self.projection(tokens), axis=1)
        return {"features": pooled, "tokens": encoded, "attention": maps}

    def compute_output_shape(self, input_shape):
        return {
            "features": (input_shape[0], self.token_width),
            "tokens": (input_shape[0], self.num_regions, self.token_width),
            "attention": tuple(input_shape[:-1]) + (self.num_regions,),
        }

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_regions": self.num_regions,
            "stem_channels": self.stem_channels,
            "token_width": self.token_width,
            "embed_channels": self.embed_channels,
            "transformer_heads": self.transformer_heads,
            "transformer_mlp_dim": self.transformer_mlp_dim,
            "transformer_dropout": self.transformer_dropout,
            "position_dropout": self.position_dropout,
        })
        return config
