"""`affectkit tune`: a KerasTuner search over a recipe, resumable and distributable.

`run_search` checks the search directory's settings (`search.json`), builds a
`RecipeHyperModel` and a KerasTuner tuner (random, bayesian or hyperband) whose trials are
`trials/trial_<id>/` run directories, prints one line per finished trial and rewrites the
results files after each (`affectkit.tuning.results`).

Resuming is KerasTuner's: the same command after a kill reloads the oracle, skips finished
trials and reruns the one in progress in its own folder, where the recipe's `Trainer`
resumes from its last backup. Distribution is KerasTuner's chief/worker scheme: with
`KERASTUNER_TUNER_ID=chief` (and `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`) the
process serves the oracle; with any other `KERASTUNER_TUNER_ID` it runs trials it asks the
chief for, on the devices it sees (e.g. one GPU each through `CUDA_VISIBLE_DEVICES`).
"""

import os
import time

from affectkit import presets
from affectkit.training import run_directory
from affectkit.tuning import results, spaces

TUNERS = ("random", "bayesian", "hyperband")
# search.json entries that must match to continue a search (max_trials may grow).
SAME_SEARCH = ("recipe", "preset", "data", "tuner", "objective", "space", "trial_config",
               "seed")


def search_settings(recipe, data, preset="paper", config=None, sets=(), epochs=None,
                    space=None, tuner="random", max_trials=10, objective="score", seed=0):
    """The `search.json` record of a search (TensorFlow-free): what decides its trials."""
    if tuner not in TUNERS:
        raise ValueError(f"--tuner {tuner!r}: expected one of {TUNERS}.")
    if int(max_trials) < 1:
        raise ValueError(f"--max-trials {max_trials}: expected at least 1.")
    full = presets.resolve(recipe, preset, sets, config=config)
    space = spaces.check_space(presets.search_space(recipe, preset) if space is None else space)
    spaces.check_keys(full, space)
    return {
        "recipe": recipe, "preset": preset, "data": os.path.abspath(data), "tuner": tuner,
        "objective": results.objective_name(objective), "max_trials": int(max_trials),
        "seed": int(seed), "space": space, "epochs": epochs,
        "trial_config": presets.resolve(recipe, preset, epochs=epochs, config=full),
        "full_config": full,
    }


def check_same_search(out, settings):
    """The settings of the search already in `out` (None if none), after checking that
    they are these (but for `max_trials`)."""
    previous = results.read_search(out)
    if previous is None:
        return None
    differ = [key for key in SAME_SEARCH if previous.get(key) != settings[key]]
    if differ:
        raise ValueError(
            f"{os.path.join(out, results.SEARCH_FILE)}: {out} holds another search "
            f"(different {', '.join(differ)}); expected the same command to resume it, or "
            "another --out for a new search.")
    return previous


def tuner_class(kind):
    """A KerasTuner tuner class of `TUNERS` that reports each trial (`ReportingTuner`)."""
    import keras_tuner as kt

    base = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization,
            "hyperband": kt.Hyperband}[kind]
    return type(f"Reporting{base.__name__}", (ReportingTuner, base), {})


class ReportingTuner:
    """Tuner mixin: after each trial, its time (`timing.json`), the search's results files
    and one progress line (trial n/N, values, score, best so far, seconds)."""

    search_dir = None
    settings = None

    def on_trial_begin(self, trial):
        self._trial_started = time.perf_counter()
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        seconds = time.perf_counter() - self._trial_started
        folder = os.path.join(self.project_dir, f"trial_{trial.trial_id}")
        os.makedirs(folder, exist_ok=True)
        if trial.status != "COMPLETED" and trial.message:  # the traceback, for its log
            with open(os.path.join(folder, results.TRIAL_LOG), "a") as log:
                log.write(f"\nThe trial failed ({trial.status}):\n{trial.message}\n")
        results.write_json(os.path.join(folder, results.TIMING_FILE),
                           {"trial_seconds": seconds})
        table = write_search_results(self.search_dir, self.settings, self.hypermodel)
        if not table.empty and (table["trial"].astype(str) == str(trial.trial_id)).any():
            print(results.progress_line(table, trial.trial_id, self.settings["max_trials"],
                                        self.settings["space"], self.settings["objective"],
                                        seconds), flush=True)


def write_search_results(out, settings, hypermodel):
    """The results files, written by one process of the search at a time."""
    with run_directory.exclusive(os.path.join(out, "results")):
        return results.write_results(
            out, settings, lambda values: hypermodel.config_of(values, full_length=True))


def run_search(recipe, data, out, preset="paper", config=None, sets=(), epochs=None,
               space=None, tuner="random", max_trials=10, objective="score", seed=0,
               verbose=False):
    """Runs (or resumes, or joins as a distributed worker) a search into `out`; returns the
    results table (a DataFrame; empty on a worker that ran no trial)."""
    if not os.path.isdir(data):
        raise FileNotFoundError(f"{data}: no such folder; expected an Aff-Wild2 folder.")
    settings = search_settings(recipe, data, preset, config, sets, epochs, space, tuner,
                               max_trials, objective, seed)
    role = os.environ.get("KERASTUNER_TUNER_ID")
    previous = check_same_search(out, settings)
    os.makedirs(out, exist_ok=True)
    results.write_json(os.path.join(out, results.SEARCH_FILE), settings)
    done = results.trial_rows(out, settings["space"]) if previous else []
    if role is None and tuner != "hyperband" and len(done) >= settings["max_trials"]:
        table = results.results_table(done, settings["space"])
        print(f"{out}: the search has finished its {len(done)} trials (--max-trials "
              f"{max_trials}); nothing to do.")
        _print_best(out, table, settings)
        return table

    import keras_tuner as kt
    from keras_tuner.src import config as kt_config

    from affectkit.tuning.hypermodel import RecipeHyperModel, epochs_of
    from affectkit.tuning.hypermodel import objective as kt_objective

    kt_config.DEBUG = False  # a failed trial's traceback goes to its log.txt, not the console

    hypermodel = RecipeHyperModel(recipe, data, out, preset=preset,
                                  config=settings["full_config"], epochs=epochs,
                                  space=settings["space"], trial_log=not verbose)
    if settings["objective"][4:] not in hypermodel.components:
        raise ValueError(f"--objective {objective!r}: expected an ABAW component of "
                         f"{recipe}'s tasks: {', '.join(hypermodel.components)}.")
    options = dict(objective=kt_objective(settings["objective"]), seed=int(seed),
                   directory=out, project_name=results.TRIALS, overwrite=False)
    if tuner == "hyperband":
        options["max_epochs"] = max(1, epochs_of(hypermodel.trial_base))
    else:
        options["max_trials"] = settings["max_trials"]
    search = tuner_class(tuner)(hypermodel, **options)
    search.search_dir, search.settings = out, settings
    if tuner == "hyperband":
        search.oracle.max_trials = settings["max_trials"]
    _print_header(out, settings, role, len(done))
    try:
        search.search(verbose=0)
    except kt.errors.FatalError as error:
        table = write_search_results(out, settings, hypermodel)
        raise ValueError(f"the search stopped: {str(error).splitlines()[0]}"
                         f"{_last_failure(out, table)}") from None
    if role is not None and role != "chief":
        print(f"worker {role}: no trial left; the chief writes the final results.")
        return write_search_results(out, settings, hypermodel)
    table = write_search_results(out, settings, hypermodel)
    if table.empty or not (table["status"] == "COMPLETED").any():
        raise ValueError(f"no trial of the search in {out} finished.{_last_failure(out, table)}")
    _print_best(out, table, settings)
    return table


def _last_failure(out, table):
    failed = table[table["status"] != "COMPLETED"] if not table.empty else table
    if failed.empty:
        return ""
    row = failed.iloc[-1]
    return (f" The last, trial {row['trial']}: {row.get('error')} (its traceback: "
            f"{os.path.join(out, row['run_dir'], results.TRIAL_LOG)}).")


def _print_header(out, settings, role, done):
    where = {None: "", "chief": " (chief: serving the oracle at "
             f"{os.environ.get('KERASTUNER_ORACLE_IP')}:"
             f"{os.environ.get('KERASTUNER_ORACLE_PORT')})"}.get(role, f" (worker {role})")
    resumed = f", {done} finished before" if done else ""
    print(f"Search: {settings['recipe']} ({settings['preset']}), {settings['tuner']}, up to "
          f"{settings['max_trials']} trials{resumed}, objective {settings['objective']} (max), "
          f"in {out}{where}")
    for name, entry in settings["space"].items():
        print("  " + spaces.describe({name: entry}, settings["full_config"])[0].strip())


def _print_best(out, table, settings):
    best = results.best_row(table)
    if best is None:
        print("No trial finished with a score.")
        return
    values = ", ".join(f"{name}={results._format(results._plain(best[name]))}"
                       for name in settings["space"])
    print(f"\nBest: trial {best['trial']}, {settings['objective']} "
          f"{float(best['objective']):.4f} ({values})")
    print(f"Results: {os.path.join(out, 'results.md')} (and results.csv, "
          "score_per_trial.png, score_vs_hyperparameters.png)")
    print(f"Train it at full length: affectkit train {settings['recipe']} --config "
          f"{os.path.join(out, 'best_config.json')} --out RUN_DIR")

