"""The `affectkit` command line: `demo-data`, `index`, `evaluate`.

Each subcommand imports what it needs when it runs, so `affectkit --help` is instant.
"""

import argparse
import sys

from affectkit.labels import EDITIONS


def _demo_data(args):
    from affectkit.data.synthetic import write_demo_dataset

    summary = write_demo_dataset(
        args.out, edition=args.edition, videos=args.videos, frames=args.frames, seed=args.seed
    )
    print(f"Wrote a synthetic Aff-Wild2 layout ({args.edition}) to {args.out}")
    for key, value in summary.items():
        print(f"  {key}: {value}")


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
    demo.add_argument("--videos", type=int, default=8)
    demo.add_argument("--frames", type=int, default=240, help="frames per video")
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
