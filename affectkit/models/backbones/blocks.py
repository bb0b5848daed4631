"""Convolution, BatchNorm and squeeze-excitation blocks shared by every backbone family.

Every convolution of affectkit's own backbones (bottleneck ResNets, RegNets, VGGFace2
ResNet-50) is a bias-free `GroupedConv2D`, so grouped convolutions (ResNeXt, RegNet) run as
TensorFlow's native op everywhere. The families differ only in the arguments they pass:

- padding `"torch"`: PyTorch's symmetric zero padding. A stride-1 convolution uses `"same"`
  (equal for odd kernels); a strided one with a kernel larger than 1 is preceded by an
  explicit `ZeroPadding2D(kernel_size // 2)` and runs `"valid"`, so it sees the same pixels
  as in PyTorch (TensorFlow's `"same"` pads asymmetrically at stride 2). Padding `"same"`:
  Keras' own rule (keras-vggface's VGGFace2 ResNet-50);
- BatchNorm epsilon and momentum: PyTorch's defaults (1e-5, momentum 0.1, i.e. Keras
  momentum 0.9) unless a family was trained with others;
- the convolution initialiser (He normal, or torchvision's RegNet fan-out normal).

Every BatchNorm is a `FusedBatchNormalization`, whose training step runs TensorFlow's fused
kernel (about 30% faster ResNet-50 training steps on this CPU than Keras' separate ops).
"""

import keras

TORCH_BN_EPSILON = 1e-5
TORCH_BN_MOMENTUM = 0.9  # PyTorch's BatchNorm momentum 0.1
PADDINGS = ("torch", "same")
POOLINGS = (None, "avg", "max")


def native_grouped_convolution():
    """Whether TensorFlow's own grouped convolution has gradients here: on a GPU, and on
    CPUs where TensorFlow runs oneDNN (its default on recent Intel CPUs, and wherever
    `TF_ENABLE_ONEDNN_OPTS=1`, which the `affectkit` command line sets); its plain CPU
    kernels compute grouped convolutions but not their gradients."""
    import tensorflow as tf

    try:
        from tensorflow.python.util import _pywrap_util_port

        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = False
    return onednn or bool(tf.config.list_physical_devices("GPU"))


@keras.saving.register_keras_serializable(package="affectkit")
class GroupedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose grouped convolution runs as TensorFlow's native op.

    Keras 3's TensorFlow backend compiles every grouped convolution (`groups > 1`) as its own
    XLA function, to avoid TensorFlow CPU kernels that once lacked grouped support. On the
    2-core CPU this project is measured on, a RegNetY-1.6GF training step (112 px, batch 16)
    then ran at 2.2 img/s, against 39 img/s with `tf.nn.convolution`, which handles groups
    natively on CPU and GPU in TF 2.21 (ResNeXt-50: 0.7 img/s before). This layer calls it
    directly with the TensorFlow backend and otherwise behaves exactly like `Conv2D` (same
    arguments, weights and config); with other backends, for `groups=1`, and where
    TensorFlow's grouped convolution has no gradient (`native_grouped_convolution`: a CPU
    without oneDNN), it is `Conv2D`.

    Args:
        Those of `keras.layers.Conv2D`.

    Example:

    ```python
    layer = GroupedConv2D(48, 3, padding="same", groups=2, use_bias=False)
    outputs = layer(keras.ops.ones((1, 8, 8, 48)))   # (1, 8, 8, 48)
    ```
    """

    def convolution_op(self, inputs, kernel):
        if (self.groups == 1 or keras.backend.backend() != "tensorflow"
                or not native_grouped_convolution()):
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf

        return tf.nn.convolution(
            inputs, kernel, strides=list(self.strides), padding=self.padding.upper(),
            dilations=list(self.dilation_rate),
            data_format="NHWC" if self.data_format == "channels_last" else "NCHW",
        )


@keras.saving.register_keras_serializable(package="affectkit")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs TensorFlow's fused kernel.

    Keras 3 computes a training-mode BatchNorm as separate ops (`tf.nn.moments`, then
    `tf.nn.batch_normalization`, then the moving-average updates), and their gradient as
    many more. With the TensorFlow backend, a 4-D channels-last input, `training=True`, a
    trainable layer and no mask, renorm or synchronisation, this layer runs the whole
    forward pass, the moving-average update and (through its registered gradient) the
    backward pass as TensorFlow's `FusedBatchNormV3` (Ioffe & Szegedy, "Batch
    Normalization", ICML 2015). The output is normalised with the biased batch variance, as
    before; the moving variance is updated with the unbiased one (`n / (n - 1)` times it),
    as PyTorch's `BatchNorm2d` and Keras 2's fused BatchNorm do. Inference, and every other
    case, is `BatchNormalization` itself; arguments, weights and config are the same.

    Args:
        Those of `keras.layers.BatchNormalization`.

    Example:

    ```python
    bn = FusedBatchNormalization(epsilon=1e-5, momentum=0.9)
    y = bn(keras.ops.ones((2, 4, 4, 8)), training=True)
    ```
    """

    def _fused(self, inputs, training, mask):
        return (
            training and self.trainable and mask is None and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4 and self.axis in (-1, 3) and self.center and self.scale
            and not self.renorm and not self.synchronized
            and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "float16", "bfloat16")
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, mean=self.moving_mean,
            variance=self.moving_variance, epsilon=self.epsilon, data_format="NHWC",
            is_training=True, exponential_avg_factor=1.0 - self.momentum,
        )
        # With exponential_avg_factor the op returns the updated moving statistics.
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return keras.ops.cast(outputs, self.compute_dtype)


def convolution(filters, kernel_size, name, strides=1, groups=1, padding="torch",
                kernel_initializer="he_normal"):
    """A bias-free `GroupedConv2D`.

    With `padding="torch"` a strided convolution is `"valid"` and needs the explicit zero
    padding of `torch_padding` in front of it (`conv_bn` adds both); otherwise `"same"`.

    Args:
        filters: output channels.
        kernel_size: int kernel size.
        name: layer name.
        strides: int stride.
        groups: groups of the convolution (ResNeXt cardinality, RegNet width / group width).
        padding: `"torch"` or `"same"` (see the module docstring).
        kernel_initializer: Keras initializer for the kernel.

    Example:

    ```python
    conv = convolution(64, 3, name="stage2_block1_conv2", groups=32)
    ```
    """
    if padding not in PADDINGS:
        raise ValueError(f"convolution {name!r}: `padding` must be one of {PADDINGS}; "
                         f"got {padding!r}.")
    keras_padding = "valid" if padding == "torch" and strides != 1 else "same"
    return GroupedConv2D(
        filters, kernel_size, strides=strides, padding=keras_padding, groups=groups,
        use_bias=False, kernel_initializer=kernel_initializer, name=name,
    )


def torch_padding(x, kernel_size, strides, name):
    """PyTorch's `kernel_size // 2` zero padding before a strided convolution, or `x`."""
    if strides == 1 or kernel_size // 2 == 0:
        return x
    return keras.layers.ZeroPadding2D(kernel_size // 2, name=name)(x)


def batch_norm(name, epsilon=TORCH_BN_EPSILON, momentum=TORCH_BN_MOMENTUM):
    """A `FusedBatchNormalization` over channels (last axis) with the family's settings."""
    return FusedBatchNormalization(epsilon=epsilon, momentum=momentum, name=name)


def conv_bn(x, filters, kernel_size, name, bn_name, relu_name=None, pad_name=None, strides=1,
            groups=1, padding="torch", kernel_initializer="he_normal",
            bn_epsilon=TORCH_BN_EPSILON, bn_momentum=TORCH_BN_MOMENTUM):
    """Convolution -> BatchNorm (-> ReLU) on the symbolic tensor `x`, with explicit names.

    Args:
        x: symbolic tensor `(batch, height, width, channels)`.
        filters, kernel_size, strides, groups, padding, kernel_initializer: as `convolution`.
        name: name of the convolution layer.
        bn_name: name of the BatchNorm layer.
        relu_name: name of the ReLU layer; `None` for no activation.
        pad_name: name of the zero padding layer a strided `"torch"` convolution needs
            (default `f"{name}_pad"`).
        bn_epsilon, bn_momentum: BatchNorm settings (PyTorch's by default).

    Example:

    ```python
    x = conv_bn(inputs, 32, 3, strides=2, name="stem_conv", bn_name="stem_bn",
                relu_name="stem_relu", pad_name="stem_pad")
    ```
    """
    if padding == "torch":
        x = torch_padding(x, kernel_size, strides, pad_name or f"{name}_pad")
    x = convolution(filters, kernel_size, name, strides=strides, groups=groups, padding=padding,
                    kernel_initializer=kernel_initializer)(x)
    x = batch_norm(bn_name, epsilon=bn_epsilon, momentum=bn_momentum)(x)
    if relu_name is not None:
        x = keras.layers.ReLU(name=relu_name)(x)
    return x


def squeeze_excitation(x, squeeze_channels, name, kernel_initializer="glorot_uniform"):
    """Squeeze-and-excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018).

    Global average pooling ("squeeze"), Dense(`squeeze_channels`) + ReLU, Dense(C) + sigmoid
    ("excitation"), channel-wise rescaling of `x`. SE-ResNet uses `C // 16` squeeze
    channels; RegNetY `round(0.25 * block input width)` (torchvision's `SqueezeExcitation`,
    whose 1x1 convolutions on the pooled vector are these Dense layers).

    Args:
        x: symbolic tensor `(batch, height, width, C)`.
        squeeze_channels: width of the bottleneck.
        name: prefix for the layer names (`{name}_squeeze`, `_reduce`, `_expand`, `_scale`).
        kernel_initializer: initializer of both Dense kernels.

    Example:

    ```python
    inputs = keras.Input((14, 14, 256))
    outputs = squeeze_excitation(inputs, squeeze_channels=16, name="se")
    ```
    """
    channels = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = keras.layers.Dense(squeeze_channels, activation="relu",
                           kernel_initializer=kernel_initializer, name=f"{name}_reduce")(s)
    s = keras.layers.Dense(channels, activation="sigmoid",
                           kernel_initializer=kernel_initializer, name=f"{name}_expand")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def check_pooling(pooling, builder):
    """Raises unless `pooling` is one of `POOLINGS`; `builder` names the caller."""
    if pooling not in POOLINGS:
        raise ValueError(f"{builder}: `pooling` must be one of {POOLINGS}; got {pooling!r}.")


def global_pooling(x, pooling):
    """`x` for `pooling=None`; its global average (`avg_pool`) or maximum (`max_pool`)."""
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x
