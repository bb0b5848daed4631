"""A search directory's results, from the trials KerasTuner recorded (no TensorFlow here).

    search.json                the search's settings (recipe, preset, space, objective, ...)
    trials/trial_<id>/         one run directory per trial (model.keras, metrics.json,
                               history.csv, config.json, log.txt) and KerasTuner's trial.json
    results.csv                one row per finished trial: its hyperparameters, score, every
                               ABAW component, seconds
    results.md                 the same, best first
    score_per_trial.png        the score of each trial and the best so far
    score_vs_hyperparameters.png  the score against each searched hyperparameter
    best_config.json           the best trial's configuration at full length:
                               `affectkit train RECIPE --config best_config.json`

Every file is written whole (to a temporary name, then renamed), so a reader never sees half
of one, and `write_results` may run after any trial, in any process of a search.
"""

import glob
import json
import os
import re

import numpy as np
import pandas as pd

from affectkit.training.run_directory import write_atomic, write_json, write_text

SEARCH_FILE = "search.json"
TRIALS = "trials"
TIMING_FILE = "timing.json"
TRIAL_LOG = "log.txt"  # a trial's output (training log, report, traceback if it failed)
FINISHED = ("COMPLETED", "FAILED", "INVALID")


def objective_name(name):
    """`val_<component>` of an ABAW component name (`score`, `expr_f1`, `val_score`)."""
    return name if name.startswith("val_") else f"val_{name}"


def read_search(out):
    """The `search.json` of a search directory, or None where there is none yet."""
    path = os.path.join(out, SEARCH_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); expected the settings of "
                             "an affectkit search.") from None


def _last_values(metrics):
    """metric name -> its last recorded value, from a trial.json's `metrics` entry."""
    out = {}
    for name, history in ((metrics or {}).get("metrics") or {}).items():
        observations = history.get("observations") or []
        if observations:
            value = observations[-1]["value"]
            out[name] = float(np.mean(value)) if isinstance(value, list) else float(value)
    return out


def trial_rows(out, space):
    """One dict per finished trial of the search in `out`, in trial order."""
    rows = []
    for path in sorted(glob.glob(os.path.join(out, TRIALS, "trial_*", "trial.json"))):
        with open(path) as f:
            trial = json.load(f)
        if trial.get("status") not in FINISHED:
            continue
        folder = os.path.dirname(path)
        values = (trial.get("hyperparameters") or {}).get("values") or {}
        found = _last_values(trial.get("metrics"))
        row = {"trial": trial["trial_id"], "status": trial["status"]}
        row.update({name: values.get(name) for name in space})
        for name in ("epochs", "initial_epoch"):  # Hyperband's budget of the trial
            if f"tuner/{name}" in values:
                row[f"budget_{name}"] = values[f"tuner/{name}"]
        row["score"] = found.get("val_score")
        row.update({name[4:]: value for name, value in found.items()
                    if name.startswith("val_") and name != "val_score"})
        row["run_seconds"] = found.get("seconds")
        timing = os.path.join(folder, TIMING_FILE)
        if os.path.isfile(timing):
            with open(timing) as f:
                row["seconds"] = json.load(f).get("trial_seconds")
        row["objective"] = trial.get("score")
        if trial["status"] != "COMPLETED":
            message = (trial.get("message") or "").strip().splitlines()
            error = message[-1] if message else trial["status"]
            error = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error)  # TF op prefixes
            row["error"] = error if len(error) <= 160 else error[:157] + "..."
        row["run_dir"] = os.path.relpath(folder, out)
        rows.append(row)
    return rows


def results_table(rows, space):
    """The rows as a DataFrame, columns in a fixed order: trial, status, hyperparameters,
    score, components, times, run directory."""
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    first = ["trial", "status", *space, "budget_epochs", "budget_initial_epoch", "score"]
    last = ["objective", "seconds", "run_seconds", "error", "run_dir"]
    middle = [c for c in table.columns if c not in first and c not in last]
    return table[[c for c in first + middle + last if c in table.columns]]


def best_row(table):
    """The finished trial with the highest objective, or None."""
    if table.empty or "objective" not in table or table["objective"].isna().all():
        return None
    return table.loc[table["objective"].astype(float).idxmax()]


def write_results(out, search, full_config=None):
    """Writes results.csv, results.md, the plots and (given `full_config`, values -> the
    best trial's run config at full length) best_config.json; returns the table."""
    space = search["space"]
    table = results_table(trial_rows(out, space), space)
    if table.empty:
        return table
    write_atomic(os.path.join(out, "results.csv"),
                 lambda p: table.to_csv(p, index=False, float_format="%.6g"))
    ranked = table.sort_values("objective", ascending=False, na_position="last")
    write_text(os.path.join(out, "results.md"), markdown(ranked, search))
    _plot(out, table, search)
    best = best_row(table)
    if best is not None and full_config is not None:
        values = {name: _plain(best[name]) for name in space}
        write_json(os.path.join(out, "best_config.json"), {
            "recipe": search["recipe"], "preset": search["preset"],
            "config": full_config(values), "data": search["data"],
            "seed": full_config(values).get("seed"),
            "search": {"trial": str(best["trial"]), "objective": search["objective"],
                       "value": float(best["objective"]), "hyperparameters": values,
                       "run_dir": best["run_dir"]},
        })
    return table


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _format(value):
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(table, search):
    """The results as a Markdown table, in the given order, with the search's settings."""
    columns = [c for c in table.columns if c not in ("run_dir", "objective")]
    lines = [f"# Search: {search['recipe']} ({search['preset']}), {search['tuner']}, "
             f"objective {search['objective']} (max)", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_format(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def progress_line(table, trial_id, max_trials, space, objective, seconds):
    """One line for a finished trial: n/N, its values, score, best so far, time."""
    row = table.loc[table["trial"].astype(str) == str(trial_id)].iloc[0]
    done = len(table)
    values = " ".join(f"{name}={_format(_plain(row[name]))}" for name in space)
    best = best_row(table)
    if row["status"] == "COMPLETED":
        result = f"{objective} {float(row['objective']):.4f}"
    else:
        result = f"{row['status'].lower()}: {row.get('error', '')}"
    best_text = ("" if best is None else
                 f"best {float(best['objective']):.4f} (trial {best['trial']})")
    total = f"/{max_trials}" if max_trials else ""
    return (f"trial {done}{total} [{trial_id}]  {values}  {result}  {best_text}  "
            f"{seconds:.0f} s")


def _plot(out, table, search):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = table[table["objective"].notna()]
    objective = search["objective"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if not scored.empty:
        x = np.arange(1, len(table) + 1)[table["objective"].notna().to_numpy()]
        ax.plot(x, scored["objective"], "o", label=objective)
        ax.plot(x, np.maximum.accumulate(scored["objective"].astype(float)), "-",
                label="best so far")
        ax.legend(fontsize=8)
    ax.set(xlabel="trial", ylabel=objective,
           title=f"{search['recipe']} ({search['tuner']} search)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(os.path.join(out, "score_per_trial.png"), lambda p: fig.savefig(p, dpi=100))
    plt.close(fig)

    space = search["space"]
    columns = min(3, len(space))
    rows = int(np.ceil(len(space) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax, (name, entry) in zip(axes.flat, space.items()):
        values = scored[name]
        if "choices" in entry:
            labels = [str(c) for c in (entry["choices"])]
            positions = [labels.index(str(_plain(v))) if str(_plain(v)) in labels else -1
                         for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.plot(positions, scored["objective"], "o", alpha=0.7)
        else:
            ax.plot(values.astype(float), scored["objective"], "o", alpha=0.7)
            low, high = float(entry["min"]), float(entry["max"])
            if entry.get("sampling", "linear") != "linear":
                ax.set_xscale("log")
                ax.set_xlim(low / 1.2, high * 1.2)
            else:
                margin = (high - low) * 0.05
                ax.set_xlim(low - margin, high + margin)
        ax.set(xlabel=name, ylabel=objective)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(space):]:
        ax.axis("off")
    fig.tight_layout()
    write_atomic(os.path.join(out, "score_vs_hyperparameters.png"),
                 lambda p: fig.savefig(p, dpi=100))
    plt.close(fig)
