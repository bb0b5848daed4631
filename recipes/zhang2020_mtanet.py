"""zhang2020_mtanet: MTANet, multi-task SENet-50 (Zhang & Gu, ABAW 2020).

Valence-arousal, 7 expressions and 8 AUs from one SE-ResNet-50 encoder (112x112 aligned
faces) with an average/max-pooled neck and one dense head per task. Training has two
stages: the plain sum of the masked losses with Adam (lr 1e-3, weight decay 1e-3), then a
fine-tune with learned uncertainty weights (paper eq. 5) and SGD (lr 1e-4, wd 5e-3).

    python recipes/zhang2020_mtanet.py --data DIR --edition abaw1 --out runs/mtanet
    python recipes/zhang2020_mtanet.py --data demo/data --preset cpu_demo --out demo/mtanet

The recipe is a config of hyperparameters (`PRESETS`) plus `build_model(config, schema)`,
so a KerasTuner HyperModel can wrap it.
"""

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from affectkit import losses as affect_losses  # noqa: E402
from affectkit import metrics  # noqa: E402
from affectkit.data.affwild2 import FrameIndex  # noqa: E402
from affectkit.data.pipeline import default_augmentation, frame_dataset, label_arrays  # noqa: E402
from affectkit.evaluation import evaluate_files, format_scores  # noqa: E402
from affectkit.inference import write_official_predictions  # noqa: E402
from affectkit.labels import get_schema  # noqa: E402
from affectkit.models.builders import mtanet  # noqa: E402
from affectkit.training.trainer import Trainer, predict_arrays  # noqa: E402
from affectkit.data.affwild2 import annotation_dir  # noqa: E402

TASKS = ("va", "expr", "au")

PAPER = {
    "edition": "abaw1",
    "image_size": 112,
    "backbone": "senet50",
    "backbone_config": {},
    "neck_width": 512,
    "dropout": 0.5,
    "batch_size": 32,
    "augment": True,
    "stage1_epochs": 10,
    "stage1_learning_rate": 1e-3,
    "stage1_weight_decay": 1e-3,
    "stage2_epochs": 5,
    "stage2_learning_rate": 1e-4,
    "stage2_weight_decay": 5e-3,
    "stage2_momentum": 0.9,
    "seed": 0,
}

PRESETS = {
    "paper": PAPER,
    # Small enough to train from scratch on the default demo data (`affectkit demo-data`:
    # 96 videos x 60 frames) in about 4 minutes on 2 CPU cores.
    "cpu_demo": dict(
        PAPER,
        edition="abaw3",
        image_size=64,
        backbone_config={"depths": (1, 1, 1, 1), "stem_width": 16,
                         "widths": (32, 64, 128, 256)},
        neck_width=64,
        dropout=0.2,
        batch_size=32,
        stage1_epochs=12,
        stage1_weight_decay=1e-4,
        stage2_epochs=2,
        stage2_learning_rate=1e-3,
    ),
}


def build_model(config, schema):
    """The MTANet network of a config (no training objects)."""
    size = config["image_size"]
    return mtanet(
        schema,
        TASKS,
        input_shape=(size, size, 3),
        backbone=config["backbone"],
        backbone_config=config["backbone_config"],
        neck_width=config["neck_width"],
        dropout=config["dropout"],
        weights=config.get("weights"),
    )


def build_losses():
    """The paper's losses: 1 - mean CCC, binary and categorical cross-entropy, all masked."""
    return {
        "va": affect_losses.MaskedCCCLoss(),
        "expr": affect_losses.MaskedCategoricalCrossentropy(),
        "au": affect_losses.MaskedBinaryCrossentropy(),
    }


def train(config, data, out):
    """Trains both stages into `out`; returns the run's report (validation and baselines)."""
    schema = get_schema(config["edition"])
    keras.utils.set_random_seed(config["seed"])
    train_index = FrameIndex.from_affwild2(data, schema, "train")
    val_index = FrameIndex.from_affwild2(data, schema, "val")
    common = dict(tasks=TASKS, batch_size=config["batch_size"], image_size=config["image_size"],
                  normalization="unit")
    train_ds = frame_dataset(
        train_index, training=True, shuffle_seed=config["seed"],
        augment=default_augmentation(config["seed"]) if config["augment"] else None, **common,
    )
    val_ds = frame_dataset(val_index, **common)
    val_labels = label_arrays(val_index, TASKS)

    trainer = Trainer.from_config(out, schema, TASKS, config)
    with trainer.strategy.scope():
        network = build_model(config, schema)
    trainer.run_stage(
        "stage1_sum", network, build_losses(),
        lambda: keras.optimizers.Adam(config["stage1_learning_rate"],
                                      weight_decay=config["stage1_weight_decay"]),
        train_ds, val_ds, val_labels, epochs=config["stage1_epochs"],
    )
    trainer.run_stage(
        "stage2_uncertainty", network, build_losses(),
        lambda: keras.optimizers.SGD(config["stage2_learning_rate"],
                                     momentum=config["stage2_momentum"],
                                     weight_decay=config["stage2_weight_decay"]),
        train_ds, val_ds, val_labels, epochs=config["stage2_epochs"], uncertainty=True,
    )
    train_labels = label_arrays(train_index, TASKS)
    baselines = {
        task: metrics.chance_baselines(task, schema, train_labels[task], val_labels[task])
        for task in TASKS
    }
    scores = trainer.finish(network, val_ds, val_labels, baselines=baselines,
                            extra={"config": config})
    official = _write_and_score_official(out, data, schema, config)
    return {"validation": scores, "chance_baselines": baselines, "official": official}


def _write_and_score_official(out, data, schema, config):
    """Predicts every annotated validation frame (nearest image for frames without one),
    writes the official files and scores them with `affectkit.evaluation`."""
    best = keras.saving.load_model(os.path.join(out, "model.keras"))
    index = FrameIndex.from_affwild2(data, schema, "val", fill_missing_images=True)
    dataset = frame_dataset(index, tasks=TASKS, batch_size=config["batch_size"],
                            image_size=config["image_size"], normalization="unit",
                            missing_images="fill")
    outputs = predict_arrays(best, dataset, TASKS)
    written = write_official_predictions(os.path.join(out, "predictions"),
                                         index.with_images_only().frames, outputs, schema)
    official = {}
    for task in TASKS:
        gt = os.path.join(data, annotation_dir(schema, task, "val"))
        official[task] = evaluate_files(schema, task, gt, written[task])
    return official


def _print_report(report, schema):
    rows = [("VA (mean CCC)", "va_score", "va"), ("EXPR", "expr_score", "expr"),
            ("AU", "au_score", "au")]
    print(f"\nValidation, {schema.edition} (best epoch)      model   chance baseline")
    for label, key, task in rows:
        base = report["chance_baselines"][task]["score"]
        print(f"  {label:<28s} {report['validation'][key]:7.4f}   {base:7.4f}")
    print(f"  {'sum (MTL P for ABAW3+)':<28s} {report['validation']['score']:7.4f}   "
          f"{sum(report['chance_baselines'][t]['score'] for t in TASKS):7.4f}")
    for task, scores in report["official"].items():
        print(f"\nOfficial prediction files scored by affectkit.evaluation ({task}):")
        print(format_scores(scores))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Aff-Wild2 root (or `affectkit demo-data` output)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--edition", help="ABAW edition of the labels (default: the preset's)")
    parser.add_argument("--epochs", type=int, help="stage-1 epochs (stage 2 keeps its ratio)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--backbone", choices=("senet50", "resnext50", "resnext50_cbam"))
    parser.add_argument("--weights", help="local backbone weights file")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--jit-compile", action="store_true")
    args = parser.parse_args(argv)

    config = copy.deepcopy(PRESETS[args.preset])
    for key in ("edition", "batch_size", "image_size", "backbone", "weights"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.epochs is not None:
        ratio = config["stage2_epochs"] / config["stage1_epochs"]
        config["stage1_epochs"] = args.epochs
        config["stage2_epochs"] = max(1, round(args.epochs * ratio))
    config["mixed_precision"] = args.mixed_precision
    config["jit_compile"] = args.jit_compile
    report = train(config, args.data, args.out)
    _print_report(report, get_schema(config["edition"]))
    print(f"\nRun directory: {args.out} (model.keras, metrics.json, history.csv, plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
