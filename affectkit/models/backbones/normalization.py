"""Input normalisation of the backbones' source networks, as layers inside the model.

affectkit models take RGB frames in [0, 1] (what `affectkit.data.pipeline` yields with
`normalization="unit"`) and normalise them themselves, so an exported `model.keras` needs no
preprocessing code beside it. A backbone takes its input the way the network its weights
come from was trained; `normalization_layer(kind)` maps [0, 1] RGB to it:

- `"imagenet"`: RGB, minus the ImageNet mean (0.485, 0.456, 0.406), divided by the standard
  deviation (0.229, 0.224, 0.225): torchvision's and timm's ImageNet weights. Core
  `keras.layers.Normalization`.
- `"vggface2"`: BGR on 0-255 minus the VGGFace2 mean (B, G, R) = (91.4953, 103.8827,
  131.0912) (Cao et al., "VGGFace2", FG 2018; keras-vggface `preprocess_input(version=2)`):
  the VGGFace2 ResNet-50 / SENet-50 weights. `VGGFace2Preprocessing`.
- `"inception"`: RGB in [-1, 1]: keras-applications' InceptionV3 weights. Core
  `keras.layers.Rescaling(2, offset=-1)`.
- `"imagenet_caffe"`: BGR on 0-255 minus the ImageNet mean (B, G, R) = (103.939, 116.779,
  123.68): keras-applications' ResNet50 weights (`preprocess_input`, "caffe" mode).
  `VGGFace2Preprocessing` with that mean.
- `None`: the backbone takes [0, 1] RGB as it is.
"""

import keras

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)
IMAGENET_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
NORMALIZATIONS = ("imagenet", "vggface2", "inception", "imagenet_caffe", None)
DEFAULT_NAMES = {"imagenet": "imagenet_normalization", "vggface2": "vggface2_preprocessing",
                 "inception": "inception_rescaling",
                 "imagenet_caffe": "imagenet_caffe_preprocessing"}


@keras.saving.register_keras_serializable(package="affectkit")
class VGGFace2Preprocessing(keras.layers.Layer):
    """VGGFace2 input normalisation inside the model: RGB in [0, 1] -> BGR minus mean.

    Computes `x[..., ::-1] * scale - mean_bgr`, i.e. keras-vggface's
    `preprocess_input(x * 255, version=2)` (Cao et al. 2018 mean of VGGFace2, in BGR order).

    Args:
        scale: factor from the input range to 0-255 (255 for [0, 1] input, 1 for 0-255).
        mean_bgr: the per-channel mean subtracted after the flip, blue first.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    ```python
    inputs = keras.Input((224, 224, 3))           # RGB in [0, 1]
    x = VGGFace2Preprocessing()(inputs)            # BGR, 0-255, minus the VGGFace2 mean
    features = vggface2_resnet50(pooling="avg")(x)
    ```
    """

    def __init__(self, scale=255.0, mean_bgr=VGGFACE2_MEAN_BGR, **kwargs):
        super().__init__(**kwargs)
        # Layer arguments.
        self.scale = float(scale)
        self.mean_bgr = tuple(float(m) for m in mean_bgr)
        if len(self.mean_bgr) != 3:
            raise ValueError(
                f"VGGFace2Preprocessing: `mean_bgr` needs 3 values (blue, green, red); "
                f"got {mean_bgr!r}."
            )

    def build(self, input_shape):
        if input_shape[-1] != 3:
            raise ValueError(
                f"VGGFace2Preprocessing expects RGB images with 3 channels last; got input "
                f"shape {tuple(input_shape)}."
            )

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        x = keras.ops.flip(x, axis=-1) * self.scale
        mean = keras.ops.convert_to_tensor(self.mean_bgr, dtype=self.compute_dtype)
        return x - mean

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "mean_bgr": list(self.mean_bgr)})
        return config


def normalization_layer(kind, name=None):
    """A layer mapping RGB in [0, 1] to the input range `kind` (see the module docstring).

    Args:
        kind: `"imagenet"`, `"vggface2"`, `"inception"`, `"imagenet_caffe"` or `None`
            (`backbone_normalization(name)` gives a backbone's).
        name: layer name; default `"imagenet_normalization"`, `"vggface2_preprocessing"` or
            `"inception_rescaling"`.

    Returns:
        A Keras layer, or `None` for `kind=None`.

    Example:

    ```python
    inputs = keras.Input((112, 112, 3))                              # RGB in [0, 1]
    x = normalization_layer(backbone_normalization("regnety_1.6gf"))(inputs)
    features = build_backbone("regnety_1.6gf", (112, 112, 3), pooling="avg")(x)
    ```
    """
    if kind not in NORMALIZATIONS:
        raise ValueError(f"normalization_layer: `kind` must be one of {NORMALIZATIONS}; "
                         f"got {kind!r}.")
    if kind is None:
        return None
    name = name or DEFAULT_NAMES[kind]
    if kind == "imagenet":
        return keras.layers.Normalization(
            mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD], name=name,
        )
    if kind == "inception":
        return keras.layers.Rescaling(2.0, offset=-1.0, name=name)
    if kind == "imagenet_caffe":
        return VGGFace2Preprocessing(mean_bgr=IMAGENET_CAFFE_MEAN_BGR, name=name)
    return VGGFace2Preprocessing(name=name)
