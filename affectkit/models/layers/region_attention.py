"""Per-region spatial attention that turns a CNN feature map into R region tokens.

The design of the ABAW3 multi-task winner (Deng, "Multiple Emotion Descriptors Estimation at
the ABAW3 Challenge", team NISL-2022), which Haider et al. 2022 (ABAW4) build on: R attention
maps over the InceptionV3 `mixed7` map (17 x 17 x 768), one per action unit (the 12 labelled
AUs plus 5 hidden ones), each refining the features for its own small convolutional branch.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="affectkit")
class RegionAttention(keras.layers.Layer):
    """R spatial attention maps and R region tokens from a feature map `(B, H, W, C)`.

    Attention stem:
        Conv 3x3 C -> `stem_channels` + BN + ReLU, Conv 1x1 -> R + BN + ReLU,
        Conv 1x1 R -> R + sigmoid: R maps `(B, H, W, R)` in [0, 1].
    Region branch r (separate weights per region):
        `x_r = features * map_r + features` -> Conv 3x3 C -> E + BN + ReLU ->
        Conv 1x1 E -> E + BN + ReLU -> global average pool -> Dense(E -> token_width).
    Output: tokens `(B, R, token_width)`.

    The R branches run together, without R separate convolutions and without grouped
    convolutions (Keras runs those through XLA, whose CPU gradient is hundreds of times slower).
    Since `conv3x3_r(x * g_r) = sum_taps shift_tap(g_r * (x @ K_r[tap]))` for a per-pixel gate
    `g_r = 1 + map_r`, one matmul `x @ K` gives every tap of every region (`C -> 9 R E`), the
    gates multiply it where each input pixel sits, and nine shifted slices are summed. The
    1x1 convolutions and the final Dense are einsums over per-region kernels. This computes
    exactly what R separate branches compute (see `tests/test_layers.py`), with the same
    FLOPs, and stores no R-fold copy of the feature map.

    Weights: `region_kernel` `(3, 3, C, R, E)` and `region_bias` `(R, E)` (region r's 3x3
    conv is `region_kernel[..., r, :]`), `pointwise_kernel` `(R, E, E)`, `pointwise_bias`
    `(R, E)`; BatchNormalization over the `R * E` channels (region-major) is per-region BN.

    Args:
        num_regions: R. Defaults to 17 (12 labelled + 5 hidden AUs).
        stem_channels: width of the attention stem's 3x3 conv. Defaults to 68 (= 4 R).
        token_width: width of each region token. Defaults to 16.
        embed_channels: E, width of each region branch's convolutions. Defaults to 16.
        return_attention: if True, the layer returns `(tokens, maps)`, maps `(B, H, W, R)`.
            Defaults to False.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    features = keras.Input((17, 17, 768))                   # InceptionV3 mixed7
    tokens, maps = RegionAttention(return_attention=True)(features)
    # tokens: (None, 17, 16), maps: (None, 17, 17, 17)
    ```
    """

    def __init__(
        self,
        num_regions=17,
        stem_channels=68,
        token_width=16,
        embed_channels=16,
        return_attention=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_regions, embed_channels = int(num_regions), int(embed_channels)
        # Layers: the attention stem.
        self.stem_conv = keras.layers.Conv2D(int(stem_channels), 3, padding="same", name="stem_conv")
        self.stem_bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="stem_bn")
        self.reduce_conv = keras.layers.Conv2D(num_regions, 1, name="reduce_conv")
        self.reduce_bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="reduce_bn")
        self.map_conv = keras.layers.Conv2D(num_regions, 1, activation="sigmoid", name="map_conv")
        # Layers: the R region branches (kernels and biases are made in build()).
        self.region_bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="region_bn")
        self.region_pointwise_bn = keras.layers.BatchNormalization(
            epsilon=1e-5, momentum=0.9, name="region_pointwise_bn"
        )
        self.token_projection = keras.layers.EinsumDense(
            "bre,ret->brt",
            output_shape=(num_regions, int(token_width)),
            bias_axes="rt",
            name="token_projection",
        )
        # Config.
        self.num_regions = num_regions
        self.stem_channels = int(stem_channels)
        self.token_width = int(token_width)
        self.embed_channels = embed_channels
        self.return_attention = bool(return_attention)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("RegionAttention: the channel dimension must be known.")
        spatial = input_shape[:-1]
        regions, embed = self.num_regions, self.embed_channels
        self.stem_conv.build(input_shape)
        self.stem_bn.build(spatial + (self.stem_channels,))
        self.reduce_conv.build(spatial + (self.stem_channels,))
        self.reduce_bn.build(spatial + (regions,))
        self.map_conv.build(spatial + (regions,))
        self.region_kernel = self.add_weight(
            shape=(3, 3, int(channels), regions, embed), initializer="glorot_uniform", name="region_kernel"
        )
        self.region_bias = self.add_weight(shape=(regions, embed), initializer="zeros", name="region_bias")
        self.pointwise_kernel = self.add_weight(
            shape=(regions, embed, embed), initializer="glorot_uniform", name="pointwise_kernel"
        )
        self.pointwise_bias = self.add_weight(shape=(regions, embed), initializer="zeros", name="pointwise_bias")
        self.region_bn.build(spatial + (regions * embed,))
        self.region_pointwise_bn.build(spatial + (regions * embed,))
        self.token_projection.build((input_shape[0], regions, embed))

    def _region_convolution(self, features, gates):
        """Per-region 3x3 'same' convolutions of `features * gates[..., r]`: (B, H, W, R, E)."""
        regions, embed = self.num_regions, self.embed_channels
        channels = features.shape[-1]
        shape = ops.shape(features)
        height, width = shape[1], shape[2]
        kernel = ops.reshape(
            ops.transpose(self.region_kernel, (2, 0, 1, 3, 4)), (channels, 9 * regions * embed)
        )
        taps = ops.matmul(features, kernel)  # (B, H, W, 9 R E): every tap of every region
        taps = ops.reshape(taps, (-1, height, width, 9, regions, embed))
        taps = taps * ops.expand_dims(ops.expand_dims(gates, 3), -1)  # gate at the source pixel
        taps = ops.pad(taps, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
        out = None
        for tap in range(9):
            i, j = divmod(tap, 3)
            part = taps[:, i : i + height, j : j + width, tap]
            out = part if out is None else out + part
        return out + self.region_bias

    def call(self, inputs, training=None):
        regions, embed = self.num_regions, self.embed_channels
        shape = ops.shape(inputs)
        height, width = shape[1], shape[2]
        # Attention maps.
        x = ops.relu(self.stem_bn(self.stem_conv(inputs), training=training))
        x = ops.relu(self.reduce_bn(self.reduce_conv(x), training=training))
        maps = self.map_conv(x)
        # Region branches, all at once (see the class docstring).
        y = self._region_convolution(inputs, 1.0 + maps)
        y = ops.reshape(y, (-1, height, width, regions * embed))
        y = ops.relu(self.region_bn(y, training=training))
        y = ops.reshape(y, (-1, height, width, regions, embed))
        y = ops.einsum("bhwre,ref->bhwrf", y, self.pointwise_kernel) + self.pointwise_bias
        y = ops.reshape(y, (-1, height, width, regions * embed))
        y = ops.relu(self.region_pointwise_bn(y, training=training))
        y = ops.mean(y, axis=(1, 2))
        y = ops.reshape(y, (-1, self.num_regions, self.embed_channels))
        tokens = self.token_projection(y)
        if self.return_attention:
            return tokens, maps
        return tokens

    def compute_output_shape(self, input_shape):
        tokens = (input_shape[0], self.num_regions, self.token_width)
        if self.return_attention:
            return tokens, tuple(input_shape[:-1]) + (self.num_regions,)
        return tokens

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_regions": self.num_regions,
                "stem_channels": self.stem_channels,
                "token_width": self.token_width,
                "embed_channels": self.embed_channels,
                "return_attention": self.return_attention,
            }
        )
        return config
