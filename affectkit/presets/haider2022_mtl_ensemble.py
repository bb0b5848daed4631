"""haider2022_mtl_ensemble: InceptionV3 + region attention + transformer (Haider et al.,
"An Ensemble Approach for Multiple Emotion Descriptors Estimation Using Multi-task
Learning", ABAW4 2022, on the ABAW3 multi-task winner's design).

InceptionV3 cut after `mixed7` (17x17x768 at 299), 17 region tokens (12 labelled and 5
hidden AUs) of width 16 encoded by one transformer layer; AU k from encoded token k,
expression and VA from the average of per-token projections. One model per view
(`view="cropped"` or `"aligned"`); the paper averages the two.
"""

MODEL = {
    "schema": "abaw4",
    "tasks": ["va", "expr", "au"],
    "input_kind": "images",
    "image_size": 299,
    "view": "aligned",
    "normalization": "backbone",
    "backbone": {"name": "inception_v3", "cut": "mixed7"},
    "neck": {"type": "region_tokens", "num_regions": 17, "stem_channels": 68,
             "token_width": 16, "embed_channels": 16, "transformer_heads": 8,
             "transformer_mlp_dim": 1024, "transformer_dropout": 0.1,
             "position_dropout": 0.3},
    "heads": {"au": {"type": "per_token", "input": "tokens"}},
}

PAPER = {
    "edition": "abaw4",
    "seed": 0,
    # ImageNet InceptionV3 (keras.applications, converted: `affectkit convert-weights
    # --name imagenet_inception_v3`); a path, or None to train from scratch (warned).
    "weights": "imagenet_inception_v3",
    # Any Keras image model file (.keras / .h5) as the backbone, cut at `backbone_layer`
    # ('sub/layer' inside a nested model); set `model.normalization` to what it expects.
    "backbone_file": None,
    "backbone_layer": None,
    # One model per view: `model.view` "aligned" (cropped_aligned/) or "cropped".
    "model": {},
    # The MTL file of the split where the edition has one, else the per-task folders.
    # augment: Resize(1.02x), RandomCrop, RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), 0.8),
    # flip, of the ABAW3 winner's base code (REFERENCE.md section 6).
    "data": {"batch_size": 24, "augment": "haider2022", "annotations": "auto"},
    # AU positive weights (negatives / positives per AU) and expression class weights
    # (largest class count / class count) from the training labels; None: unweighted.
    "losses": {"au_pos_weights": "auto", "expr_class_weights": "auto"},
    # One stage, SGD (momentum 0.9, lr 1e-3), 50 epochs. The VA loss is 1 - CCC per
    # dimension summed: twice `MaskedCCCLoss`, their mean. The learning rate follows the
    # base code's CosineAnnealingLR(T_max=1e4) stepped every batch (periodic, as PyTorch's:
    # it rises again after 1e4 batches; `optimizers.CosineAnnealing`).
    "stages": {
        "mtl": {"epochs": 50, "optimizer": {"name": "sgd", "learning_rate": 1e-3,
                                            "momentum": 0.9,
                                            "schedule": {"name": "cosine_annealing",
                                                         "t_max": 10000}},
                "loss_weights": {"va": 2.0, "expr": 1.0, "au": 1.0}},
    },
    # Validation faces whose region attention maps `attention_maps.png` shows (0: none).
    "attention_maps": 8,
    "run": {"mixed_precision": False, "jit_compile": False, "backup_every": 50,
            "strategy": "auto"},
}

RUNS = {
    "paper": PAPER,
    # Trains from scratch on the default demo data (`affectkit demo-data`) in a few minutes
    # on 2 CPU cores: a 2-stage bottleneck ResNet (one block per stage) at 64 px gives an
    # 8x8x128 map instead of InceptionV3's 17x17x768 at 299. Adam: the paper's SGD from
    # scratch (with a 3-stage, 4x4 version) stayed near chance within the demo's epochs.
    "cpu_demo": dict(
        PAPER,
        edition="abaw3",
        weights=None,  # a tiny backbone, trained from scratch
        model={"image_size": 64, "normalization": "imagenet",
               "backbone": {"name": "resnet50", "depths": [1, 1], "stem_width": 32,
                            "widths": [64, 128], "bottleneck_widths": [16, 32]}},
        stages={
            "mtl": {"epochs": 12, "optimizer": {"name": "adam", "learning_rate": 1e-3},
                    "loss_weights": {"va": 2.0, "expr": 1.0, "au": 1.0}},
        },
        attention_maps=6,
    ),
}

# `affectkit tune` search spaces (`affectkit.tuning.spaces`), from the paper's design
# choices: the 5 hidden-AU regions on or off (17 or the 12 labelled AUs' regions), the
# token width, the view the model sees, and the weights of the three losses.
SPACE = {
    "hidden_aus": {"choices": {"on": 17, "off": 12}, "keys": ["model.neck.num_regions"]},
    "token_width": {"choices": [8, 16, 32], "keys": ["model.neck.token_width"]},
    "view": {"choices": ["aligned", "cropped"], "keys": ["model.view"]},
    "va_weight": {"min": 0.5, "max": 4.0, "keys": ["stages.mtl.loss_weights.va"]},
    "expr_weight": {"min": 0.25, "max": 2.0, "keys": ["stages.mtl.loss_weights.expr"]},
    "au_weight": {"min": 0.25, "max": 2.0, "keys": ["stages.mtl.loss_weights.au"]},
}

SPACES = {"paper": SPACE, "cpu_demo": SPACE}
