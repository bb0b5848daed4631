"""haider2022_mtl_ensemble: InceptionV3 + region attention + transformer, one model per view.

What the paper adds to the shared run: its losses (AU binary cross-entropy with per-AU
positive weights and expression cross-entropy with class weights, both computed from the
training labels, and 1 - CCC per VA dimension summed), the region attention maps of a few
validation faces (`attention_maps.png`), and, optionally, any Keras image model file as
the backbone (`backbone_file`, `backbone_layer`). The base code's learning rate, cosine
annealing stepped every batch, is the stage's optimizer `schedule`
(`affectkit.training.optimizers.CosineAnnealing`). Network and settings:
`affectkit.presets.haider2022_mtl_ensemble`.

One model is trained per view (`--set model.view=aligned` or `cropped`); the paper's
system is their average, each on its own view:
`affectkit.evaluation.ensembles.ensemble([aligned_run, cropped_run], out)`.
"""

import os

import keras
import numpy as np

from affectkit import losses, plots
from affectkit.data.affwild2 import FrameIndex, view_columns
from affectkit.data.pipeline import frame_dataset
from affectkit.models.affect_model import AffectModel
from affectkit.models.backbones import model_file_backbone
from affectkit.recipes.base import Recipe

# The ABAW3 winner's code (and so Haider et al.) adds 5 unlabelled AUs as extra regions.
HIDDEN_AUS = ("AU5", "AU9", "AU14", "AU16", "AU17")
# Aff-Wild2 folder names accepted for `model.view` (the old script's `cropped_aligned`).
VIEW_FOLDERS = {"cropped_aligned": "aligned"}


class RegionAttentionRecipe(Recipe):
    """Haider et al., "An Ensemble Approach for Multiple Emotion Descriptors Estimation
    Using Multi-task Learning" (ABAW4 2022)."""

    name = "haider2022_mtl_ensemble"

    def __init__(self, config, data, out, preset=None):
        super().__init__(config, data, out, preset=preset)
        view = self.model_config.get("view")
        self.model_config["view"] = VIEW_FOLDERS.get(view, view)
        self.loss_weights = None

    def build_losses(self, stage, train_labels):
        """Masked VA 1 - CCC (the stage's `loss_weights` make it the sum over both
        dimensions), weighted expression and AU cross-entropies (`config["losses"]`)."""
        self.loss_weights = losses.resolve_loss_weights(self.config["losses"], train_labels,
                                                        self.schema)
        return {
            "va": losses.MaskedCCCLoss(),
            "expr": losses.MaskedCategoricalCrossentropy(
                class_weights=self.loss_weights["expr_class_weights"]),
            "au": losses.MaskedBinaryCrossentropy(
                pos_weights=self.loss_weights["au_pos_weights"]),
        }

    def build_model(self):
        """The preset's network; with `backbone_file`, that model file cut at
        `backbone_layer` replaces the backbone."""
        path = self.config.get("backbone_file")
        if not path:
            return super().build_model()
        layer = self.config.get("backbone_layer")
        if self.config.get("weights"):
            raise ValueError(f"backbone_file {path!r} carries its own weights: expected "
                             f"weights=None, got {self.config['weights']!r}.")
        if self.model_config.get("normalization") == "backbone":
            raise ValueError(
                f"backbone_file {path!r}: the model file takes what it was trained on; set "
                "model.normalization to 'imagenet', 'vggface2', 'inception' or null ([0, 1]).")
        size = int(self.model_config["image_size"])
        backbone = model_file_backbone(path, layer=layer, input_shape=(size, size, 3))
        shapes = [tuple(output.shape) for output in backbone.outputs]
        if len(shapes) != 1 or len(shapes[0]) != 4:
            raise ValueError(
                f"backbone_file {path!r} cut at {layer!r}: region attention needs one feature "
                f"map (batch, height, width, channels); the cut model outputs {shapes}. Pick a "
                "convolutional layer (e.g. InceptionV3 'mixed7').")
        config = {k: v for k, v in self.model_config.items() if k != "backbone"}
        return AffectModel(backbone=backbone, **config)

    def extra_report(self, best, val_index):
        report = {"loss_weights": self.loss_weights}
        count = int(self.config.get("attention_maps") or 0)
        if count:
            path = os.path.join(self.out, "attention_maps.png")
            self.write_attention_maps(best, val_index, count, path)
            report["attention_maps"] = os.path.basename(path)
        return report

    def write_attention_maps(self, model, index, count, path):
        """Plots the region attention maps of `model` over `count` validation faces spread
        over `index`; returns the maps `(count, h, w, R)`."""
        view = self.model_config["view"]
        frames = index.frames
        rows = np.flatnonzero(frames[view_columns(view).has_image].to_numpy(bool))
        if not len(rows):
            raise ValueError(f"attention maps: no validation frame of {index.root} has a "
                             f"{view!r} image.")
        picks = rows[np.unique(np.linspace(0, len(rows) - 1, int(count)).astype(int))]
        subset = FrameIndex(frames.iloc[picks].reset_index(drop=True), index.schema, index.root)
        dataset = frame_dataset(subset, tasks=self.tasks, batch_size=len(picks),
                                image_size=self.model_config["image_size"], view=view,
                                normalization="unit")
        images = np.concatenate([x for x, _ in dataset.as_numpy_iterator()])
        maps = attention_model(model).predict(images, verbose=0)
        plots.plot_attention_maps(
            images, maps, region_names(self.schema, maps.shape[-1]), path,
            title=f"Region attention maps, {view} view (0 blue .. 1 red); hidden AUs last")
        return maps


def attention_model(model):
    """A model from `model`'s input to its neck's R region attention maps `(B, H, W, R)`
    in [0, 1]; for an `AffectModel` with a `RegionTokenNeck`, built or reloaded."""
    try:
        neck = model.get_layer("neck")
    except ValueError:
        neck = None
    shapes = None if neck is None else neck.compute_output_shape(neck.input.shape)
    if not isinstance(shapes, dict) or "attention" not in shapes:
        raise ValueError(f"{model.name!r} has no region attention neck: expected an "
                         "AffectModel whose neck is a RegionTokenNeck (haider2022_mtl_ensemble).")
    # A layer's `output` is flat; put the neck's dict back together.
    outputs = keras.tree.pack_sequence_as({key: key for key in shapes}, neck.output)
    return keras.Model(model.inputs, outputs["attention"], name="region_attention_maps")


def region_names(schema, num_regions):
    """Names of the attention regions: the schema's AUs, then the hidden AUs."""
    names = list(schema.aus) + list(HIDDEN_AUS)
    names += [f"region {i}" for i in range(len(names), num_regions)]
    return names[:num_regions]
