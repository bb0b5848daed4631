"""do2020_stat_temporal: the multi-task temporal statistical model (Do et al., ABAW 2020).

What the paper adds to the shared run, in two phases:

(a) `prepare()`: the face feature model (Sec. II-B, `do2020_face_model`: VGGFace2 ResNet-50
    with a new softmax, frozen before `conv4_1_1x1_reduce`), fine-tuned for expressions on
    class-balanced frames with online augmentation, and its feature cache (a 2048-d feature
    and the class probabilities of every frame), extracted once. Both live in the face
    directory (`face.dir`) and are reused by every variant that names the same one.
(b) The temporal model (Sec. II-C, Fig. 2), the preset's `AffectModel` on windows of the
    cache: the current frame's feature and the probabilities of it and its s - 1 previous
    frames. Its losses: cross-entropy, 1 - CCC of valence and arousal, and the MSE of the
    5-vector [a, v, m, |a - m|, |v - m|], weighted by eq. 4 (`loss_weights`).

The six models of Table I are the config's `variant` (a name of `VARIANTS` or 1-6), which
becomes model overrides. The paper's "Fusion" row is the library's ensemble of finished
runs: `affectkit.evaluation.ensembles.ensemble([run_2, run_6], out, method="average")`.
Every variant indexes the VA and EXPR annotations (ABAW1 tracks 1 and 2) alike, so any two
runs predict the same validation frames and fuse.

Differences from the paper: its face model is first fine-tuned on AffectNet and RAF-DB
(give such a model as `face.model_file` or `face.weights`), and its last stage is fine-tuned
again with the temporal model; here the face model stays frozen in phase (b), which lets
phase (b) read the cache (`tools/bench_temporal.py` measures the speed-up). Network and
settings: `affectkit.presets.do2020_stat_temporal`.
"""

import copy
import hashlib
import os
from typing import NamedTuple

import keras
import numpy as np

from affectkit import losses, metrics, presets
from affectkit.data.affwild2 import FrameIndex
from affectkit.data.pipeline import default_augmentation, frame_dataset, frame_rows, label_arrays
from affectkit.features.cache import FeatureCache
from affectkit.features.extraction import extract_features
from affectkit.models.backbones.resnet_vggface2 import do2020_face_model
from affectkit.recipes.base import Recipe
from affectkit.training import run_directory
from affectkit.training.optimizers import build_optimizer
from affectkit.training.trainer import Trainer

FACE_MODEL_FILE = "face_model.keras"
FACE_OUTPUTS = ("feature", "probabilities")


class Variant(NamedTuple):
    """One model of the paper's Table I."""

    number: int
    title: str
    stat: bool
    lstm: bool
    va: bool

    @property
    def temporal(self):
        """True when the model reads the previous frames ("Image, previous blocks")."""
        return self.stat or self.lstm


# Table I: "Frame" models have the STAT module, "with LSTM" ones STAT and the LSTM, "VA"
# ones add the arousal, valence and 5-vector branches.
VARIANTS = {
    "emotion_image": Variant(1, "Emotion Image", stat=False, lstm=False, va=False),
    "emotion_va_image": Variant(2, "Emotion VA Image", stat=False, lstm=False, va=True),
    "emotion_frame": Variant(3, "Emotion Frame", stat=True, lstm=False, va=False),
    "emotion_va_frame": Variant(4, "Emotion VA Frame", stat=True, lstm=False, va=True),
    "emotion_frame_lstm": Variant(5, "Emotion Frame with LSTM", stat=True, lstm=True, va=False),
    "emotion_va_frame_lstm": Variant(6, "Emotion VA Frame with LSTM", stat=True, lstm=True,
                                     va=True),
}


def get_variant(name):
    """The `Variant` of a name of `VARIANTS` or a Table I model number (1-6)."""
    if isinstance(name, Variant):
        return name
    key = str(name).strip().lower()
    if key.isdigit():
        key = {v.number: k for k, v in VARIANTS.items()}.get(int(key), key)
    if key not in VARIANTS:
        raise ValueError(f"Unknown variant {name!r}: expected one of {', '.join(VARIANTS)} or a "
                         "Table I model number 1-6.")
    return VARIANTS[key]


def variant_name(name):
    """The `VARIANTS` key of a variant (name, number or `Variant`)."""
    variant = get_variant(name)
    return next(k for k, v in VARIANTS.items() if v == variant)


def variant_overrides(variant, model_config, schema):
    """`AffectModel` overrides of a Table I model, over the model config they apply to.

    STAT and the LSTM switch on or off; the image models (neither) read a window of 1
    frame, the others the `s` of `feature_inputs.probabilities`; models without VA have
    only the expression head. The probabilities' class axis is the schema's.
    """
    variant = get_variant(variant)
    shape = list(model_config["feature_inputs"]["probabilities"])
    window = int(shape[0]) if variant.temporal else 1
    return {
        "tasks": ["va", "expr", "va_vector"] if variant.va else ["expr"],
        "temporal": {"stat": variant.stat, "lstm": variant.lstm},
        "feature_inputs": {"probabilities": [window, schema.num_expressions]},
    }


def eq4_loss_weights(weights, va):
    """Per-output weights of eq. 4, w1 CE + w2 (1 - CCC_a) + w3 (1 - CCC_v) + w4 MSE, from
    `{"expr": w1, "ccc": w2 = w3, "mse": w4}`.

    `MaskedCCCLoss` on `va` is ((1 - CCC_v) + (1 - CCC_a)) / 2, so its weight is 2 w2.
    """
    out = {"expr": float(weights["expr"])}
    if va:
        out.update(va=2.0 * float(weights["ccc"]), va_vector=float(weights["mse"]))
    return out


def balanced_expression_index(index, seed):
    """Frames for phase (a), drawn so every expression class is equally frequent.

    The paper's "balance emotion sampling": of the frames with an expression label and an
    image, as many are drawn (with replacement, seeded) as there are, each class with equal
    probability. Returns a `FrameIndex` of the drawn rows.
    """
    frames = index.frames
    keep = (frames["expr"].to_numpy() >= 0) & frames["has_image"].to_numpy(bool)
    rows = np.flatnonzero(keep)
    if not len(rows):
        raise ValueError(f"{index.root}: no training frame has both an expression label and "
                         "an image; phase (a) trains the face model on such frames.")
    labels = frames["expr"].to_numpy()[rows]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    probability = 1.0 / (len(counts) * counts[inverse])
    draws = np.random.default_rng(seed).choice(rows, size=len(rows), replace=True,
                                               p=probability / probability.sum())
    return FrameIndex(frames.iloc[np.sort(draws)].reset_index(drop=True), index.schema,
                      index.root)


def weights_fingerprint(model):
    """SHA-1 of a model's weights: the cache manifest names the exact face model."""
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def add_va_vector_label(x, y):
    """`va_vector` label: the (valence, arousal) labels, from which `VAVectorMSE` builds
    the 5-vector target."""
    return x, {**y, "va_vector": y["va"]}


class StatTemporalRecipe(Recipe):
    """Do, Nguyen-Quynh & Kim, "Affective Expression Analysis in-the-wild using Multi-Task
    Temporal Statistical Deep Learning Model" (FG 2020, ABAW 2020)."""

    name = "do2020_stat_temporal"
    index_tasks = ("va", "expr")

    def __init__(self, config, data, out, preset=None):
        super().__init__(config, data, out, preset=preset)
        self.variant = get_variant(self.config["variant"])
        self.config["variant"] = variant_name(self.variant)
        self.model_config = presets.merge(
            self.model_config, variant_overrides(self.variant, self.model_config, self.schema))
        self.tasks = tuple(t for t in self.model_config["tasks"] if t in ("va", "expr", "au"))
        weights = eq4_loss_weights(self.config["loss_weights"], self.variant.va)
        for stage in self.config["stages"].values():
            stage["loss_weights"] = dict(weights)
        self.cache = None

    # ------------------------------------------------------------------ phase (b)

    def build_losses(self, stage, train_labels):
        """Masked cross-entropy (eq. 1); VA variants add 1 - CCC (eq. 2) and the 5-vector
        MSE (eq. 3)."""
        out = {"expr": losses.MaskedCategoricalCrossentropy()}
        if self.variant.va:
            out.update(va=losses.MaskedCCCLoss(), va_vector=losses.VAVectorMSE())
        return out

    def feature_sources(self):
        """The model's inputs from the feature cache (built by `prepare`)."""
        if self.cache is None:
            raise RuntimeError(f"{self.name}: no feature cache yet; run prepare() first.")
        return {name: (self.cache, [name]) for name in FACE_OUTPUTS}

    def datasets(self, train_index, val_index):
        train_ds, val_ds, val_labels = self.window_datasets(train_index, val_index,
                                                            self.feature_sources())
        if self.variant.va:
            train_ds = train_ds.map(add_va_vector_label)
        return train_ds, val_ds, val_labels

    def predict_frames(self, model, index):
        return self.predict_windows(model, index, self.feature_sources())

    def extra_report(self, best, val_index):
        """The variant, its window, and the face model's softmax alone on the same frames."""
        view = self.model_config.get("view", "aligned")
        targets = frame_rows(val_index, view=view)
        probabilities = self.cache.features_for(targets, ["probabilities"])["probabilities"]
        labels = label_arrays(val_index, ("expr",), view=view)["expr"]
        face_dir, _, _ = self.face_paths()
        return {
            "variant": variant_name(self.variant),
            "table_i_model": self.variant.number,
            "window": int(self.model_config["feature_inputs"]["probabilities"][0]),
            "face_model_softmax": {"expr": metrics.abaw_scores("expr", self.schema, labels,
                                                               probabilities)},
            "face_dir": os.path.abspath(face_dir),
            "cache": self.cache.path,
        }

    def run(self, network=None, callbacks=()):
        report = super().run(network, callbacks)
        face = report["face_model_softmax"]["expr"]
        print(f"\nTable I model {self.variant.number} ({self.variant.title}, s = "
              f"{report['window']}); the face model's softmax alone (phase a): EXPR score "
              f"{face['score']:.4f} (F1 {face['f1']:.4f}, accuracy {face['accuracy']:.4f})")
        return report

    # ------------------------------------------------------------------ phase (a)

    def prepare(self):
        """Phase (a): the face model (loaded or trained) and its feature cache, built by
        one process at a time (runs may share a face directory)."""
        with run_directory.exclusive(self.face_paths()[0]):
            face = self.face_model()
            self.cache = self.extract_cache(face)
        # The temporal model starts from the same seed whether phase (a) ran now or not.
        keras.utils.set_random_seed(self.config["seed"])

    @classmethod
    def shared_preparation(cls, config, folder):
        """Phase (a) in `folder/face_<digest>`, named by what decides it (the `face`
        settings, seed, edition and annotations), unless the config names its own face
        directory, model file or cache."""
        face = config["face"]
        if face.get("dir") or face.get("model_file") or face.get("cache"):
            return config
        decided_by = {"face": face, "seed": config["seed"], "edition": config["edition"],
                      "annotations": config["data"].get("annotations")}
        config = copy.deepcopy(config)
        config["face"]["dir"] = os.path.join(folder,
                                             "face_" + run_directory.config_digest(decided_by))
        return config

    def face_paths(self):
        """`(face_dir, model_file, cache_dir)` of the config (defaults filled in)."""
        face = self.config["face"]
        face_dir = face.get("dir") or os.path.join(self.out, "face")
        model_file = face.get("model_file") or os.path.join(face_dir, FACE_MODEL_FILE)
        cache = face.get("cache") or os.path.join(
            os.path.dirname(os.path.abspath(model_file)), "cache")
        return face_dir, model_file, cache

    def build_face_model(self):
        """The untrained face feature model of the config: `{"feature", "probabilities"}`."""
        face = self.config["face"]
        if face.get("trainable_from") and not face.get("weights"):
            raise ValueError(
                f"face.trainable_from={face['trainable_from']!r} freezes every layer before "
                "it, but face.weights is null: those layers would stay randomly initialised. "
                "Expected face.weights (a local keras-vggface resnet50 .h5, or converted "
                "VGGFace2 ResNet-50 weights), or --set face.trainable_from=null to train "
                "every layer from scratch.")
        size = int(face["image_size"])
        model = do2020_face_model(input_shape=(size, size, 3),
                                  num_classes=self.schema.num_expressions,
                                  weights=face.get("weights"),
                                  trainable_from=face["trainable_from"],
                                  **(face.get("backbone") or {}))
        return self.check_face_model(model, "face.backbone")

    def check_face_model(self, model, where):
        """Raises unless `model` gives `feature` of the preset's width and `probabilities`
        of the schema's classes."""
        outputs = model.output if isinstance(model.output, dict) else {}
        expected = {"feature": int(self.model_config["feature_inputs"]["feature"][-1]),
                    "probabilities": self.schema.num_expressions}
        got = {name: tuple(tensor.shape) for name, tensor in outputs.items()}
        if set(got) != set(FACE_OUTPUTS) or any(got[k][-1] != v for k, v in expected.items()):
            raise ValueError(
                f"{where}: expected a face feature model with outputs `feature` (B, "
                f"{expected['feature']}) (the preset's model.feature_inputs.feature) and "
                f"`probabilities` (B, {expected['probabilities']}) ({self.schema.edition}); got "
                f"{got or model.output}. Set model.feature_inputs.feature to the face model's "
                "feature width (the last of face.backbone.widths).")
        return model

    def face_model(self):
        """The trained face model: `face.model_file` when it exists, else trained into the
        face directory (phase (a)) and saved there."""
        face_dir, path, _ = self.face_paths()
        if os.path.exists(path):
            print(f"[face] using the face model of {path}")
            return self.check_face_model(keras.saving.load_model(path), path)
        if self.config["face"].get("model_file"):
            raise FileNotFoundError(f"face.model_file {path}: no such file; expected a trained "
                                    f"face feature model (a {FACE_MODEL_FILE} of a face dir).")
        return self.train_face_model(face_dir, path)

    def train_face_model(self, face_dir, path):
        """Phase (a): fine-tunes the face model for expressions on class-balanced frames,
        as a resumable `Trainer` stage in `face_dir`; saves it to `path` and returns it."""
        face = self.config["face"]
        tasks = ("expr",)
        train_index, val_index = self.index("train"), self.index("val")
        common = dict(tasks=tasks, batch_size=face["batch_size"], image_size=face["image_size"],
                      normalization="unit")
        augment = default_augmentation(self.config["seed"]) if face.get("augment") else None
        train_ds = frame_dataset(balanced_expression_index(train_index, self.config["seed"]),
                                 training=True, shuffle_seed=self.config["seed"],
                                 augment=augment, **common)
        val_ds = frame_dataset(val_index, **common)
        val_labels = label_arrays(val_index, tasks)

        trainer = Trainer.from_config(face_dir, self.schema, tasks, self.config["run"])
        with trainer.strategy.scope():
            model = self.build_face_model()
            network = keras.Model(model.input, {"expr": model.get_layer("probabilities").output},
                                  name="do2020_face_training")
        trainer.run_stage("face", network, {"expr": losses.MaskedCategoricalCrossentropy()},
                          lambda: build_optimizer(face["optimizer"]), train_ds, val_ds,
                          val_labels, epochs=face["epochs"])
        baselines = {"expr": metrics.chance_baselines(
            "expr", self.schema, label_arrays(train_index, tasks)["expr"], val_labels["expr"])}
        trainer.finish(network, val_ds, val_labels, baselines=baselines,
                       extra={"recipe": self.name, "phase": "face", "face": face})
        best = keras.saving.load_model(os.path.join(face_dir, "model.keras"))
        model = keras.Model(best.input, {name: best.get_layer(name).output
                                         for name in FACE_OUTPUTS}, name="do2020_face_model")
        model.save(path)
        return model

    def extract_cache(self, face):
        """Runs the face model once over every frame of both splits into the cache folder
        (videos already there are skipped; a cache of another face model raises)."""
        _, _, cache_dir = self.face_paths()
        view = self.model_config.get("view", "aligned")
        description = {"name": face.name, "recipe": self.name,
                       "weights_sha1": weights_fingerprint(face)}
        for split in ("train", "val"):
            extract_features(face, self.index(split), cache_dir, view=view,
                             normalization="unit",
                             batch_size=self.config["face"]["extract_batch_size"],
                             description=description)
        return FeatureCache(cache_dir)
