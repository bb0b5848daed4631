"""The `affectkit` command line: `demo-data`, `index`, `evaluate`, `extract-features`.

Each subcommand imports the modules it needs when it runs. (`import affectkit` itself
loads TensorFlow, so that every custom object is registered for reloading models.)
"""

import argparse
import os
import sys

from affectkit.data.synthetic import DEMO_DEFAULTS
from affectkit.labels import EDITIONS


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
    from affectkit.evaluation import evaluate_files, format_scores, write_scores

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
        from affectkit.data.features import backbone_feature_model

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
        from affectkit.data.audio import extract_audio_features

        try:
            summary = extract_audio_features(
                args.data, args.out, features=args.model, edition=args.edition,
                split=args.split, videos_dir=args.videos_dir, dtype=args.dtype,
            )
        except ImportError as error:  # eGeMAPS without the optional opensmile package
            raise ValueError(str(error)) from error
        print(f"{args.model} features of {args.data} ({args.split}) in {summary['path']}")
    else:
        from affectkit.data.features import extract_features

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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="affectkit", description="Multi-task facial affect analysis (ABAW / Aff-Wild2)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo-data", help="write a synthetic dataset in the Aff-Wild2 layout"
    )
    demo.add_argument("--out", required=True, help="folder to write")
    demo.add_argument("--edition", default="abaw3", choices=EDITIONS)
    demo.add_argument("--videos", type=int, default=DEMO_DEFAULTS["videos"],
                      help="face tracks; about a quarter are validation (default %(default)s)")
    demo.add_argument("--frames", type=int, default=DEMO_DEFAULTS["frames"],
                      help="frames per video (default %(default)s)")
    demo.add_argument("--fps", type=float, default=DEMO_DEFAULTS["fps"],
                      help="frame rate (default %(default)s: several expressions per video, so "
                           "that a model must read expressions, not recognise identities)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo_data)

    index = commands.add_parser(
        "index", help="summarise an Aff-Wild2 split: videos, labelled frames, missing labels"
    )
    index.add_argument("--root", required=True, help="Aff-Wild2 root folder")
    index.add_argument("--edition", required=True, choices=EDITIONS)
    index.add_argument("--split", required=True, choices=("train", "val"))
    index.add_argument("--fill-missing-images", action="store_true",
                       help="use the nearest frame's image for frames without one")
    index.add_argument("--out", help="write the frame index as CSV")
    index.set_defaults(run=_index)

    evaluate = commands.add_parser(
        "evaluate", help="score official-format predictions with the ABAW metrics"
    )
    evaluate.add_argument("--edition", required=True, choices=EDITIONS)
    evaluate.add_argument("--task", required=True, choices=("va", "expr", "au", "mtl"))
    evaluate.add_argument("--gt", required=True,
                          help="annotation folder (va/expr/au) or MTL annotation file")
    evaluate.add_argument("--pred", required=True,
                          help="prediction folder (va/expr/au) or MTL submission file")
    evaluate.add_argument("--json", help="also write every component as JSON")
    evaluate.set_defaults(run=_evaluate)

    extract = commands.add_parser(
        "extract-features",
        help="run a model once over every frame (or read the audio) and cache the features",
    )
    extract.add_argument("--model", required=True,
                         help="a Keras model file (.keras, .h5), a backbone name, "
                              "or 'logmel' / 'egemaps' for audio")
    extract.add_argument("--data", required=True, help="Aff-Wild2 root folder")
    extract.add_argument("--out", required=True, help="cache folder (resumes if it exists)")
    extract.add_argument("--edition", choices=EDITIONS,
                         help="needed with --split train or val")
    extract.add_argument("--split", default="all", choices=("train", "val", "all"))
    extract.add_argument("--layer", help="layer of a model file to read features from "
                                         "('sub/layer' inside a nested model)")
    extract.add_argument("--image-size", type=int,
                         help="frame side fed to the model (default: the model's, 112 "
                              "for backbones)")
    extract.add_argument("--batch-size", type=int, default=64)
    extract.add_argument("--weights", help="local weights file of a backbone")
    extract.add_argument("--normalization", choices=("unit", "imagenet", "caffe", "none"),
                         help="pixel normalisation before the model (default unit: RGB in "
                              "[0, 1], what affectkit models take)")
    extract.add_argument("--view", default="aligned", choices=("aligned", "cropped"))
    extract.add_argument("--videos-dir", help="video files for audio (default <data>/videos)")
    extract.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                         help="storage dtype of the features")
    extract.set_defaults(run=_extract_features)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"affectkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
