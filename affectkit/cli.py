"""The `affectkit` command line.

Every subcommand is one row of `COMMANDS`: its name, a help line, a function that adds
its arguments and a function that runs it, importing what it needs only then. Adding a
subcommand takes a row and those two functions. `--help`, `demo-data`, `index` and
`evaluate` never import TensorFlow (`import affectkit` does not either).

A command whose row says `uses_tensorflow` runs with TensorFlow's C++ start-up lines
dropped from stderr (`affectkit.tensorflow_logs`) unless `--verbose` is given; errors and
tracebacks always show. Bad input (a missing or malformed file) ends with one message
naming the file and exit status 2.
"""

import argparse
import os
import sys
from typing import Callable, NamedTuple

# TensorFlow's oneDNN CPU kernels (its default only on some Intel CPUs) are several times
# faster for convolutions and give grouped convolutions their gradients
# (`affectkit.models.backbones.blocks.native_grouped_convolution`); set before TensorFlow
# is imported. `TF_ENABLE_ONEDNN_OPTS=0` keeps TensorFlow's plain kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from affectkit.labels import EDITIONS
from affectkit.tensorflow_logs import quiet_tensorflow_logs


def _demo_data(args):
    from affectkit.data.synthetic import write_demo_dataset

    summary = write_demo_dataset(
        args.out, edition=args.edition, videos=args.videos, frames=args.frames, seed=args.seed,
        fps=args.fps,
    )
    print(f"Wrote a synthetic Aff-Wild2 layout ({args.edition}) to {args.out}")
    print(f"  videos: {summary['videos_per_split']} ({len(summary['sources'])} mp4 sources), "
          f"{summary['frames_per_video']} frames each, {summary['frames']} frames in all")
    print(f"  frames without an image: {sum(summary['missing_images'].values())}")
    per_task = {task: sum(task in tasks for tasks in summary["tasks"].values())
                for task in ("va", "expr", "au")}
    print(f"  videos annotated per task: {per_task}")
    for key, path in summary["paths"].items():
        if isinstance(path, str):
            print(f"  {key}: {path}")


def _index(args):
    from affectkit.data.affwild2 import FrameIndex

    index = FrameIndex.from_affwild2(
        args.root, args.edition, args.split, fill_missing_images=args.fill_missing_images
    )
    print(f"{args.root} ({args.edition}, {args.split}): {len(index)} frames, "
          f"{len(index.videos)} videos")
    print(index.summary().to_string())
    if args.out:
        index.frames.to_csv(args.out, index=False)
        print(f"Frame index written to {args.out}")


def _evaluate(args):
    from affectkit.evaluation.scoring import evaluate_files, format_scores, write_scores

    scores = evaluate_files(args.edition, args.task, args.gt, args.pred)
    print(f"ABAW {args.edition} {args.task} on {args.gt}")
    print(format_scores(scores))
    if args.json:
        write_scores(args.json, scores)
        print(f"Scores written to {args.json}")


def _feature_model(args):
    """`(model, description, normalization)` for `--model`: a model file or a backbone name."""
    from affectkit.models.backbones import available_backbones

    if args.model.lower().endswith((".keras", ".h5", ".hdf5")):
        if args.weights:
            raise ValueError(f"--weights applies to backbone names; {args.model} is a model "
                             "file that holds its own weights.")
        from affectkit.models.backbones import model_file_backbone

        size = args.image_size
        model = model_file_backbone(args.model, layer=args.layer, trainable=False,
                                    input_shape=None if size is None else (size, size, 3))
        description = {"name": model.name, "file": os.path.abspath(args.model),
                       "layer": args.layer}
        return model, description, args.normalization or "unit"
    if args.model in available_backbones():
        if args.layer:
            raise ValueError(f"--layer applies to model files; backbone {args.model!r} gives "
                             "its pooled last feature map.")
        from affectkit.features.extraction import backbone_feature_model

        weights = os.path.abspath(args.weights) if args.weights else None
        model = backbone_feature_model(args.model, args.image_size or 112, weights=weights)
        description = {"name": model.name, "backbone": args.model, "weights": weights}
        return model, description, args.normalization or "unit"
    raise ValueError(
        f"unknown --model {args.model!r}: expected a Keras model file (.keras, .h5), a "
        f"backbone name ({', '.join(available_backbones())}), or an audio feature "
        "(logmel, egemaps)."
    )


def _extract_features(args):
    if args.split != "all" and args.edition is None:
        raise ValueError(f"--split {args.split} needs --edition (folder names differ by "
                         "edition); or use --split all.")
    if args.model in ("logmel", "egemaps"):
        from affectkit.features.audio import extract_audio_features

        try:
            summary = extract_audio_features(
                args.data, args.out, features=args.model, edition=args.edition,
                split=args.split, videos_dir=args.videos_dir, dtype=args.dtype,
            )
        except ImportError as error:  # eGeMAPS without the optional opensmile package
            raise ValueError(str(error)) from error
        print(f"{args.model} features of {args.data} ({args.split}) in {summary['path']}")
    else:
        from affectkit.features.extraction import extract_features

        model, description, normalization = _feature_model(args)
        normalization = None if normalization == "none" else normalization
        summary = extract_features(
            model, args.data, args.out, edition=args.edition, split=args.split,
            image_size=args.image_size, view=args.view, normalization=normalization,
            batch_size=args.batch_size, description=description, dtype=args.dtype,
        )
        print(f"Features of {description['name']} on {args.data} ({args.split}) in "
              f"{summary['path']}")
    for key in ("videos_done", "videos_skipped", "videos_without_frames", "frames", "outputs"):
        if key in summary:
            print(f"  {key}: {summary[key]}")


def _demo_data_arguments(parser):
    from affectkit.data.synthetic import DEMO_DEFAULTS

    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--edition", default="abaw3", choices=EDITIONS)
    parser.add_argument("--videos", type=int, default=DEMO_DEFAULTS["videos"],
                        help="face tracks; about a quarter are validation (default %(default)s)")
    parser.add_argument("--frames", type=int, default=DEMO_DEFAULTS["frames"],
                        help="frames per video (default %(default)s)")
    parser.add_argument("--fps", type=float, default=DEMO_DEFAULTS["fps"],
                        help="frame rate (default %(default)s: several expressions per video, "
                             "so that a model must read expressions, not recognise identities)")
    parser.add_argument("--seed", type=int, default=0)


def _index_arguments(parser):
    parser.add_argument("--root", required=True, help="Aff-Wild2 root folder")
    parser.add_argument("--edition", required=True, choices=EDITIONS)
    parser.add_argument("--split", required=True, choices=("train", "val"))
    parser.add_argument("--fill-missing-images", action="store_true",
                        help="use the nearest frame's image for frames without one")
    parser.add_argument("--out", help="write the frame index as CSV")


def _evaluate_arguments(parser):
    parser.add_argument("--edition", required=True, choices=EDITIONS)
    parser.add_argument("--task", required=True, choices=("va", "expr", "au", "mtl"))
    parser.add_argument("--gt", required=True,
                        help="annotation folder (va/expr/au) or MTL annotation file")
    parser.add_argument("--pred", required=True,
                        help="prediction folder (va/expr/au) or MTL submission file")
    parser.add_argument("--json", help="also write every component as JSON")


def _extract_features_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="a Keras model file (.keras, .h5), a backbone name, "
                             "or 'logmel' / 'egemaps' for audio")
    parser.add_argument("--data", required=True, help="Aff-Wild2 root folder")
    parser.add_argument("--out", required=True, help="cache folder (resumes if it exists)")
    parser.add_argument("--edition", choices=EDITIONS, help="needed with --split train or val")
    parser.add_argument("--split", default="all", choices=("train", "val", "all"))
    parser.add_argument("--layer", help="layer of a model file to read features from "
                                        "('sub/layer' inside a nested model)")
    parser.add_argument("--image-size", type=int,
                        help="frame side fed to the model (default: the model's, 112 "
                             "for backbones)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weights", help="local weights file of a backbone")
    parser.add_argument("--normalization", choices=("unit", "imagenet", "caffe", "none"),
                        help="pixel normalisation before the model (default unit: RGB in "
                             "[0, 1], what affectkit models take)")
    parser.add_argument("--view", default="aligned", choices=("aligned", "cropped"))
    parser.add_argument("--videos-dir", help="video files for audio (default <data>/videos)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                        help="storage dtype of the features")


def _shard_arguments(parser):
    parser.add_argument("--data", required=True, help="Aff-Wild2 root folder")
    parser.add_argument("--edition", required=True, choices=EDITIONS)
    parser.add_argument("--split", required=True, choices=("train", "val"))
    parser.add_argument("--out", required=True, help="folder of this split's shards (resumes "
                                                     "if it exists)")
    parser.add_argument("--shards", type=int, help="shard files (default: about 128 MiB "
                                                   "each, at least 8)")
    parser.add_argument("--view", default="aligned", choices=("aligned", "cropped"))
    parser.add_argument("--annotations", default="auto", choices=("auto", "mtl", "per_task"),
                        help="the MTL file where the edition has one (auto), or per-task "
                             "folders")
    parser.add_argument("--missing-images", default="skip", choices=("skip", "fill"),
                        help="frames without their own image: left out, or the nearest one's")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a folder written for other frames or settings")


def _shard(args):
    from affectkit.data.shards import shard_command

    shard_command(args.data, args.edition, args.split, args.out, shards=args.shards,
                  view=args.view, annotations=args.annotations,
                  missing_images=args.missing_images, overwrite=args.overwrite)


def _recipes(args):
    import textwrap

    from affectkit import presets

    print("Recipes (`affectkit train RECIPE --preset NAME`; `python recipes/RECIPE.py` too):")
    for name in presets.available():
        runs = presets.run_presets(name)
        model = presets.model_preset(name)
        print(f"\n  {name}")
        print(textwrap.fill(presets.title(name), 92, initial_indent="    ",
                            subsequent_indent="    "))
        print(f"    model: {model['input_kind']} -> "
              + " -> ".join(part for part in _model_parts(model) if part))
        print(f"    presets: {', '.join(runs)}")


def _model_parts(model):
    backbone = (model.get("backbone") or {}).get("name")
    yield backbone
    for key in ("neck", "temporal"):
        yield (model.get(key) or {}).get("type")
    yield "heads " + "/".join(model["tasks"])


def _train_arguments(parser):
    from affectkit import presets

    parser.add_argument("recipe", choices=presets.available(), help="recipe name")
    parser.add_argument("--data", help="Aff-Wild2 folder (or `affectkit demo-data` output); "
                                       "with --config, default the run's")
    parser.add_argument("--out", required=True, help="run directory (rerun to resume)")
    parser.add_argument("--preset", default="paper", help="run preset (default paper; "
                                                          "`affectkit recipes` lists them)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset key, dotted for nested keys (values are JSON "
                             "or text), e.g. --set data.batch_size=16 "
                             "--set model.backbone.name=resnext50; repeatable")
    parser.add_argument("--epochs", type=int, help="set every stage's epochs (quick runs)")
    parser.add_argument("--config", help="a run's config.json: train exactly that "
                                         "configuration again (--set and --epochs still apply)")
    parser.add_argument("--strategy", choices=("auto", "mirrored", "multiworker"),
                        help="sets run.strategy: auto (the preset's default: MirroredStrategy "
                             "with several GPUs), mirrored (this machine's GPUs) or "
                             "multiworker (the cluster of TF_CONFIG; run it on every worker)")


def _train(args):
    from affectkit import presets
    from affectkit.training.run_directory import read_run_config

    base, data, preset = None, args.data, args.preset
    if args.config:
        record = read_run_config(args.config)
        if record["recipe"] != args.recipe:
            raise ValueError(f"{args.config}: a run of {record['recipe']}, not {args.recipe}.")
        base, data, preset = record["config"], data or record["data"], record.get("preset")
    if not data:
        raise ValueError("--data is required (the Aff-Wild2 folder to train on).")
    if not os.path.isdir(data):
        raise FileNotFoundError(f"{data}: no such folder; expected an Aff-Wild2 folder.")
    config = presets.resolve(args.recipe, preset, args.set, args.epochs, config=base)
    if args.strategy:
        config.setdefault("run", {})["strategy"] = args.strategy
    out, strategy = args.out, None
    if config.get("run", {}).get("strategy") == "multiworker":
        from affectkit.training import distribute

        # Before the recipe runs anything in TensorFlow; its trainer gets the same strategy.
        strategy = distribute.build_strategy("multiworker")
        out = distribute.worker_run_dir(args.out, strategy)
    from affectkit.recipes import get_recipe

    get_recipe(args.recipe)(config, data, out, preset=preset).run()
    if out != args.out:
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # a non-chief worker's own folder
        print(f"\nWorker {distribute.task(strategy)[1]} done; the chief writes {args.out}.")
        return
    print(f"\nRun directory: {args.out} (model.keras, metrics.json, config.json, history.csv, "
          "plots, predictions/)")


def _predict_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="a run directory of `affectkit train` or a model.keras file")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="videos, images, or folders of them")
    parser.add_argument("--out", required=True, help="folder for <name>.csv per input")
    parser.add_argument("--detector", default="blazeface", choices=("blazeface", "mtcnn"),
                        help="face detector (weights ship in its pip package; default blazeface)")
    parser.add_argument("--every", type=int, default=1, metavar="K",
                        help="detect faces every K frames and track them in between (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="faces per model call")
    parser.add_argument("--submission", action="store_true",
                        help="also write ABAW prediction files for Aff-Wild2-named videos")
    parser.add_argument("--plots", action="store_true",
                        help="also write PNGs: valence/arousal, expressions, AU heatmap")
    parser.add_argument("--overlay", action="store_true",
                        help="also write an annotated MP4 per video")


def _predict(args):
    from affectkit.inference.prediction_files import predict_to_files
    from affectkit.inference.predictor import FacePredictor

    predictor = FacePredictor(args.model, detector=args.detector, every=args.every,
                              batch_size=args.batch_size)
    summary = predict_to_files(predictor, args.input, args.out, submission=args.submission,
                               plots=args.plots, overlay=args.overlay)
    print("\n".join(summary.lines()))
    if summary.failed:
        total = len(summary.failed) + len(summary.written) + len(summary.skipped)
        raise ValueError(f"{len(summary.failed)} of {total} inputs failed (listed above).")


def _tune_arguments(parser):
    from affectkit import presets
    from affectkit.tuning.search import TUNERS

    parser.add_argument("recipe", choices=presets.available(), help="recipe name")
    parser.add_argument("--data", help="Aff-Wild2 folder (or `affectkit demo-data` output)")
    parser.add_argument("--out", help="search directory (rerun the command to resume)")
    parser.add_argument("--preset", default="paper",
                        help="run preset the trials start from (default paper)")
    parser.add_argument("--tuner", default="random", choices=TUNERS,
                        help="KerasTuner search algorithm (default random)")
    parser.add_argument("--max-trials", type=int, default=10,
                        help="trials in all (default %(default)s)")
    parser.add_argument("--space", help="JSON or YAML file overriding the search space "
                                        "entry by entry (null removes one); see --show-space")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset key in every trial (as in `affectkit train`)")
    parser.add_argument("--epochs", type=int,
                        help="every stage's epochs in a trial (best_config.json keeps the "
                             "preset's); hyperband: its largest budget is their sum")
    parser.add_argument("--objective", default="score",
                        help="ABAW validation component to maximise (default score; e.g. "
                             "expr_f1, va_arousal)")
    parser.add_argument("--seed", type=int, default=0, help="the tuner's seed")
    parser.add_argument("--config", help="a run's config.json to start from instead of "
                                         "--preset")
    parser.add_argument("--show-space", action="store_true",
                        help="print the search space and exit")


def _tune(args):
    from affectkit import presets
    from affectkit.training.run_directory import read_run_config
    from affectkit.tuning import spaces

    base, preset = None, args.preset
    if args.config:
        record = read_run_config(args.config)
        if record["recipe"] != args.recipe:
            raise ValueError(f"{args.config}: a run of {record['recipe']}, not {args.recipe}.")
        base, preset = record["config"], record.get("preset") or preset
        args.data = args.data or record.get("data")
    space = presets.search_space(args.recipe, preset)
    if args.space:
        space = spaces.load_space(args.space, base=space)
    if args.show_space:
        config = presets.resolve(args.recipe, preset, args.set, config=base)
        spaces.check_keys(config, space, where=args.space or f"{args.recipe} search space")
        print(f"Search space of {args.recipe} ({preset}); `--space FILE` overrides entries:")
        print("\n".join(spaces.describe(space, config)))
        return
    missing = [flag for flag, value in (("--data", args.data), ("--out", args.out)) if not value]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required (or --show-space).")
    from affectkit.tuning.search import run_search

    run_search(args.recipe, args.data, args.out, preset=preset, config=base, sets=args.set,
               epochs=args.epochs, space=space, tuner=args.tuner, max_trials=args.max_trials,
               objective=args.objective, seed=args.seed, verbose=args.verbose)


def _convert_weights_arguments(parser):
    # No imports here: affectkit.models imports TensorFlow, whose start-up lines would
    # show before they are filtered. The library checks the names.
    parser.add_argument("--name",
                        help="named weights a paper preset expects (vggface2_senet50, "
                             "vggface2_resnet50, imagenet_inception_v3, "
                             "imagenet_regnety_1.6gf): sets --source, --backbone and --out (in "
                             "$AFFECTKIT_WEIGHTS, default ~/.affectkit/weights)")
    parser.add_argument("--source",
                        help="the framework the checkpoint comes from: torchvision, timm, "
                             "keras or keras-vggface")
    parser.add_argument("--backbone",
                        help="the affectkit backbone to fill (resnet50, senet50, resnext50, "
                             "regnety_1.6gf, inception_v3, vggface2_resnet50, ...)")
    parser.add_argument("--in", dest="checkpoint", required=True,
                        help="the checkpoint: .pth or .safetensors (torchvision, timm), "
                             "keras.applications .h5 / .weights.h5 (keras), keras-vggface "
                             ".h5 (keras-vggface)")
    parser.add_argument("--out", help="the .weights.h5 file to write (and a .json beside it)")


def _convert_weights(args):
    from affectkit.models.backbones.conversion import convert_pretrained, convert_weights

    if args.name:
        if args.source or args.backbone or args.out:
            raise ValueError("--name sets --source, --backbone and --out: give either --name "
                             "or all three.")
        from affectkit.models.backbones.pretrained import pretrained_path

        out = pretrained_path(args.name)
        record = convert_pretrained(args.name, args.checkpoint)
    else:
        missing = [f"--{k}" for k in ("source", "backbone", "out") if not getattr(args, k)]
        if missing:
            raise ValueError(f"convert-weights needs --name, or {', '.join(missing)}.")
        record, out = convert_weights(args.source, args.backbone, args.checkpoint,
                                      args.out), args.out
    print(f"{args.checkpoint} ({record['source']}) -> {out}: backbone {record['backbone']}, "
          f"input normalisation {record['normalization']!r} (recorded in "
          f"{out[: -len('.weights.h5')]}.json)")


def _ensemble_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="finished run directories (or folders of fold_k runs)")
    parser.add_argument("--out", required=True, help="folder for the ensemble's files")
    parser.add_argument("--method", default="average", choices=("average", "vote"),
                        help="average the outputs, or vote the expression classes")
    parser.add_argument("--data", help="Aff-Wild2 folder to score against (default: the "
                                       "first run's)")


def _ensemble(args):
    from affectkit.evaluation.ensembles import ensemble
    from affectkit.evaluation.scoring import format_scores

    report = ensemble(args.runs, args.out, method=args.method, data=args.data)
    print(f"Ensemble ({report['method']}) of {len(report['runs'])} runs, {report['edition']}:")
    for run, official in report["members"].items():
        for task, scores in official.items():
            print(f"\n  {run} ({task}):")
            print(format_scores(scores))
    for task, scores in report["ensemble"].items():
        print(f"\nEnsemble, official prediction files scored by affectkit.evaluation ({task}):")
        print(format_scores(scores))
    print(f"\nEnsemble written to {args.out} (metrics.json, predictions/)")


class Command(NamedTuple):
    """One subcommand: `add_arguments(parser)` declares its options, `run(args)` does it."""

    name: str
    help: str
    add_arguments: Callable
    run: Callable
    uses_tensorflow: bool = False


COMMANDS = (
    Command("demo-data", "write a synthetic dataset in the Aff-Wild2 layout",
            _demo_data_arguments, _demo_data),
    Command("index", "summarise an Aff-Wild2 split: videos, labelled frames, missing labels",
            _index_arguments, _index),
    Command("evaluate", "score official-format predictions with the ABAW metrics",
            _evaluate_arguments, _evaluate),
    Command("extract-features",
            "run a model once over every frame (or read the audio) and cache the features",
            _extract_features_arguments, _extract_features, uses_tensorflow=True),
    Command("shard", "write a split as TFRecord shards (JPEG bytes and labels) for "
            "multi-worker training", _shard_arguments, _shard, uses_tensorflow=True),
    Command("recipes", "list the recipes (one per paper) and their presets",
            lambda parser: None, _recipes),
    Command("train", "train a recipe into a run directory (resumes when rerun)",
            _train_arguments, _train, uses_tensorflow=True),
    Command("convert-weights", "map a torchvision, timm, keras.applications or keras-vggface "
            "checkpoint onto an affectkit backbone (.weights.h5)", _convert_weights_arguments,
            _convert_weights,
            uses_tensorflow=True),
    Command("tune", "search a recipe's hyperparameters with KerasTuner (resumes when rerun; "
            "chief/worker through KERASTUNER_* variables)", _tune_arguments, _tune,
            uses_tensorflow=True),
    Command("predict", "run a trained model on videos and images: faces -> per-frame "
            "affect CSV (plots, overlay, ABAW submission)", _predict_arguments, _predict,
            uses_tensorflow=True),
    Command("ensemble", "average (or vote) finished runs' validation predictions and score "
            "them", _ensemble_arguments, _ensemble, uses_tensorflow=True),
)

_VERBOSE_HELP = ("show every TensorFlow log line (by default its C++ start-up lines and the "
                 "harmless grappler remapper error are hidden)")

# Errors that mean bad input (a file that is missing or not as expected), not a bug.
_INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                 PermissionError)


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser that declares its arguments when first used, so that
    `affectkit --help` and one subcommand do not import what the others need."""

    def __init__(self, *args, add_arguments=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def _declare_arguments(self):
        if self._add_arguments is not None:
            add_arguments, self._add_arguments = self._add_arguments, None
            add_arguments(self)
            # --verbose also after the subcommand; SUPPRESS keeps one given before it.
            self.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                              help=_VERBOSE_HELP)

    def parse_known_args(self, args=None, namespace=None):
        self._declare_arguments()
        return super().parse_known_args(args, namespace)

    def format_help(self):
        self._declare_arguments()
        return super().format_help()

    def format_usage(self):
        self._declare_arguments()
        return super().format_usage()


def build_parser():
    parser = argparse.ArgumentParser(
        prog="affectkit", description="Multi-task facial affect analysis (ABAW / Aff-Wild2)."
    )
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    subcommands = parser.add_subparsers(dest="command", required=True,
                                        parser_class=_SubcommandParser)
    for command in COMMANDS:
        subparser = subcommands.add_parser(command.name, help=command.help,
                                           add_arguments=command.add_arguments)
        subparser.set_defaults(run=command.run, uses_tensorflow=command.uses_tensorflow)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    with quiet_tensorflow_logs(enabled=args.uses_tensorflow and not args.verbose):
        try:
            args.run(args)
        except _INPUT_ERRORS as error:
            print(f"affectkit {args.command}: error: {error}", file=sys.stderr)
            return 2
    return 0


def run_recipe_script(name, argv=None):
    """`python recipes/NAME.py ARGS` is `affectkit train NAME ARGS`."""
    return main(["train", name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
