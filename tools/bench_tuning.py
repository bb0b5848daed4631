"""The tuner's overhead around training: `affectkit tune` against `affectkit train` of the
same configuration, side by side, in turns.

Rows of the table (each a whole command, TensorFlow start-up included):

    train   `affectkit train RECIPE --preset P --epochs E` into a fresh run directory
    tune    `affectkit tune RECIPE --preset P --epochs E --max-trials 1` into a fresh search
            directory, over a space of one hyperparameter whose only choice is the preset's
            value: the one trial trains exactly what `train` trains

and, inside the tune command, the trial as the tuner timed it (`timing.json`: from
`on_trial_begin` to the results files and progress line after it) against what `affectkit
train` does inside it, build the network and run the recipe (`results.csv`'s
`run_seconds`). The overhead is the difference as a share of the trial (the checkpoint
KerasTuner keeps, its bookkeeping, the results files and plots); the target is at most 5%.

Usage:
    python tools/bench_tuning.py                 # demo data of 32 videos x 40 frames, 2 rounds
    python tools/bench_tuning.py --data demo/data --epochs 3 --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import pandas as pd  # noqa: E402

from affectkit import presets  # noqa: E402
from affectkit.tuning import spaces  # noqa: E402

TARGET = 0.05


def affectkit(*args):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, CI="1", TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "affectkit.cli", *args], env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"affectkit {' '.join(args[:2])} failed:\n{result.stderr[-3000:]}")
    return seconds


def fixed_space(recipe, preset):
    """A space of the recipe's first hyperparameter with the preset's value as its only
    choice (a trial of it is the preset itself)."""
    config = presets.resolve(recipe, preset)
    name, entry = next(iter(presets.search_space(recipe, preset).items()))
    value = spaces.config_value(entry, spaces.default_value(config, name, entry))
    return {name: {"choices": {"preset": value}, "keys": spaces.entry_keys(name, entry)}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="zhang2020_mtanet")
    parser.add_argument("--preset", default="cpu_demo")
    parser.add_argument("--data", help="Aff-Wild2 folder (default: demo data written here)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from affectkit.data.synthetic import write_demo_dataset

            data = os.path.join(tmp, "data")
            write_demo_dataset(data, edition="abaw3", videos=32, frames=40, seed=0)
        space_file = os.path.join(tmp, "space.json")
        with open(space_file, "w") as f:
            json.dump(fixed_space(args.recipe, args.preset), f)
        common = ["--data", data, "--preset", args.preset, "--epochs", str(args.epochs)]
        for item in args.set:
            common += ["--set", item]
        times = {"train": [], "tune": []}
        inside = []
        # A warm-up run (file caches), then the two commands in turns, alternating which
        # goes first.
        affectkit("train", args.recipe, *common, "--epochs", "1", "--out",
                  os.path.join(tmp, "warm_up"))
        for round_ in range(args.rounds):
            for kind in (("train", "tune") if round_ % 2 == 0 else ("tune", "train")):
                out = os.path.join(tmp, f"{kind}_{round_}")
                extra = (["--max-trials", "1", "--space", space_file] if kind == "tune" else [])
                times[kind].append(affectkit(kind, args.recipe, *common, *extra, "--out", out))
            row = pd.read_csv(os.path.join(tmp, f"tune_{round_}", "results.csv")).iloc[0]
            inside.append((float(row["seconds"]), float(row["run_seconds"])))

    train, tune = (statistics.median(times[k]) for k in ("train", "tune"))
    trial, run = (statistics.median(v[i] for v in inside) for i in (0, 1))
    overhead = (trial - run) / trial
    print(f"{args.recipe} ({args.preset}), {args.epochs} epochs per stage, median of "
          f"{args.rounds} rounds (whole commands, TensorFlow start-up included):")
    print(f"  affectkit train              {train:7.1f} s")
    print(f"  affectkit tune, 1 trial      {tune:7.1f} s   ratio tune/train {tune / train:.3f}")
    print(f"  inside tune: trial {trial:.1f} s, build + recipe run {run:.1f} s: tuner overhead "
          f"{trial - run:.2f} s = {overhead:.1%} of the trial (target <= {TARGET:.0%})")
    return 0 if overhead <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
