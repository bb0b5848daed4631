"""phan2022_regnet_transformer: RegNet + attention + transformer encoder (Phan et al., ABAW3 2022).

What the paper adds to the shared run: its loss (a focal loss, alpha 0.9 and gamma 2, with
label smoothing 0.1, masked: by default in the form of the authors' code, with a KL term,
`losses.form`), the learning rate reduced on plateau of the validation score (the stage's
`plateau`), and which backbone layers train (`train_backbone`, `trainable_from`: the paper's
code freezes the stem and the first stage). The model
is a clip model (`AffectModel` of `input_kind="clips"`: `frames` `(B, T, H, W, 3)` RGB in
[0, 1] -> `expr` `(B, T, classes)`), so the shared run trains and predicts it on clips of
consecutive frames (`affectkit.data.clips`: `data.clip_frames`, `data.train_stride`,
`data.cache_frames`). Network, settings and the choice of clip frames:
`affectkit.presets.phan2022_regnet_transformer`.
"""


import keras

from affectkit import losses
from affectkit.models.backbones.weights import freeze_layers_before
from affectkit.recipes.base import Recipe

LOSS_FORMS = ("authors", "keras")


class RegNetTransformerRecipe(Recipe):
    """Phan, Huynh, Nguyen & Kim, "Expression Classification using Concatenation of Deep
    Neural Network for the 3rd ABAW3 Competition" (CVPRW 2022)."""

    name = "phan2022_regnet_transformer"

    def build_losses(self, stage, train_labels):
        """The focal loss with label smoothing of `config["losses"]`, -1 labels masked:
        `form` `"authors"` is the authors' code (`losses.MaskedFocalKLLoss`: focal term
        weighted `focal_weight`, KL to the smoothed labels weighted `kl_weight`), `"keras"`
        Keras' focal cross-entropy (`losses.MaskedFocalLoss`)."""
        settings = self.config["losses"]
        form = settings.get("form", "keras")
        if form not in LOSS_FORMS:
            raise ValueError(f"losses.form={form!r}: expected one of {LOSS_FORMS}.")
        common = dict(alpha=settings["focal_alpha"], gamma=settings["focal_gamma"],
                      label_smoothing=settings["label_smoothing"])
        if form == "authors":
            return {"expr": losses.MaskedFocalKLLoss(focal_weight=settings["focal_weight"],
                                                     kl_weight=settings["kl_weight"], **common)}
        return {"expr": losses.MaskedFocalLoss(**common)}

    def stage_callbacks(self, stage):
        """Reduce-on-plateau of the validation score (`val_score`, the macro-F1), with the
        stage's `plateau` settings (`factor`, `patience`); none without them."""
        plateau = self.config["stages"][stage].get("plateau")
        if not plateau:
            return []
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_score", mode="max",
                                                  factor=plateau["factor"],
                                                  patience=plateau["patience"], verbose=1)]

    def build_model(self):
        """The preset's network with the backbone layers of the config frozen: all of them
        with `train_backbone` False; with `trainable_from` (a backbone layer name, e.g.
        RegNet's `"stage2_block1_a_conv"`), every layer before it
        (`freeze_layers_before`); none otherwise. Frozen BatchNorm layers run in inference
        mode (Keras' rule for a layer that is not trainable)."""
        model = super().build_model()
        first = self.config.get("trainable_from")
        if not self.config.get("train_backbone", True):
            if first:
                raise ValueError(f"train_backbone=false freezes the whole backbone, but "
                                 f"trainable_from={first!r} trains it from that layer; expected "
                                 "trainable_from=null with train_backbone=false.")
            model.backbone.trainable = False
        elif first:  # without weights, `run` refuses (`check_frozen_layers`)
            freeze_layers_before(model.backbone, first)
        return model
