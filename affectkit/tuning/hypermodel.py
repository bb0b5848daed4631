"""`RecipeHyperModel`: a KerasTuner `HyperModel` over any recipe.

A trial is a recipe run with some preset keys changed: `build(hp)` returns the recipe's
`AffectModel` for the trial's values and `fit` trains it with the recipe's stages into the
trial's run directory, returning every ABAW validation component (`val_score`, ...).
"""

import contextlib
import logging
import os
import time

import keras_tuner as kt
import numpy as np
from keras_tuner.src.engine import tuner_utils

from affectkit import metrics, presets
from affectkit.labels import get_schema
from affectkit.recipes import get_recipe
from affectkit.training import run_directory
from affectkit.tuning import spaces
from affectkit.tuning.results import TRIAL_LOG, objective_name

OBJECTIVE = "val_score"


def objective(name=OBJECTIVE):
    """The `kt.Objective` of an ABAW component (`score`, `expr_f1`, `val_va_arousal`, ...):
    validation, maximised."""
    return kt.Objective(objective_name(name), direction="max")


def component_names(schema, tasks):
    """Every scalar ABAW validation component of `tasks` (`score`, `va_valence`, ...), as
    `Trainer` reports them; from the metrics on a few made-up labels."""
    schema = get_schema(schema)
    examples = {
        "va": (np.array([[0.1, 0.2], [-0.3, 0.4], [0.5, -0.1]]),
               np.array([[0.2, 0.1], [-0.2, 0.3], [0.4, 0.0]])),
        "expr": (np.arange(3) % schema.num_expressions, np.eye(schema.num_expressions)[:3]),
        "au": (np.eye(3, schema.num_aus, dtype=int), np.eye(3, schema.num_aus)),
    }
    names = ["score"]
    for task in tasks:
        scores = metrics.abaw_scores(task, schema, *examples[task])
        names += [f"{task}_{k}" for k, v in scores.items() if np.ndim(v) == 0]
    return names


def budget_stages(stages, epochs, initial_epoch=0):
    """The stages that make up epochs `[initial_epoch, epochs)` of the recipe's schedule
    stretched (or shrunk) to `epochs` in all, each stage keeping its share (a tuner's epoch
    budget, e.g. Hyperband's). Stages left with no epoch are dropped.

    Example:
    >>> budget_stages({"a": {"epochs": 12}, "b": {"epochs": 2}}, epochs=7)
    {'a': {'epochs': 6}, 'b': {'epochs': 1}}
    """
    lengths = np.array([int(stage["epochs"]) for stage in stages.values()])
    ends = np.floor(np.cumsum(lengths) * epochs / max(1, lengths.sum()) + 0.5).astype(int)
    out, start = {}, 0
    for (name, stage), end in zip(stages.items(), ends):
        count = int(end - max(start, initial_epoch))
        if count > 0:
            out[name] = dict(stage, epochs=count)
        start = end
    return out


@contextlib.contextmanager
def trial_output(path):
    """Sends what a trial prints, and TensorFlow's Python warnings (e.g. of functions
    traced again for each trial's new model), to the file `path`; nothing with None."""
    if path is None:
        yield
        return
    logger = logging.getLogger("tensorflow")
    with open(path, "a") as stream, contextlib.redirect_stdout(stream):
        def to_log(record):
            stream.write(f"{record.levelname}: {record.getMessage()}\n")
            return False

        logger.addFilter(to_log)
        try:
            yield
        finally:
            logger.removeFilter(to_log)


class RecipeHyperModel(kt.HyperModel):
    """A recipe as a KerasTuner `HyperModel`: a trial is a run of the recipe with its search
    space's keys set to the trial's values.

    Args:
        recipe: recipe name (`affectkit recipes`).
        data: the Aff-Wild2 folder (or `affectkit demo-data` output).
        directory: the search directory: trials without a tuner's trial folder run in
            `directory/trials/<digest of their values>`, and work that trials share
            (feature caches, do2020's face model) goes to `directory/shared`.
        preset: the run preset the search starts from.
        config: a whole run config in place of the preset (e.g. a run's `config.json`).
        sets: `KEY=VALUE` overrides applied before the search (`affectkit train --set`).
        epochs: every stage's epochs in a trial (quick searches; the full length stays in
            `full_config`).
        space: the search space (default the preset's, `affectkit.presets.search_space`).
        trial_log: send each trial's output to `log.txt` in its run directory.

    `build(hp)` returns the recipe's `AffectModel`; `fit(hp, model, epochs=None,
    initial_epoch=0, callbacks=None)` trains it with the recipe's stages (an epoch budget
    stretches them, `budget_stages`) and returns `{"val_score": ..., "val_<component>":
    ..., "seconds": ...}` (seconds: the network's build and the recipe run). Under a
    KerasTuner tuner the run directory is the tuner's trial folder, and the best network's
    weights go where the tuner keeps its checkpoint, so `tuner.get_best_models()` and
    Hyperband's continued trials work.

    Example:
    >>> hypermodel = RecipeHyperModel("zhang2020_mtanet", "demo/data", "search",
    ...                               preset="cpu_demo")
    >>> tuner = kt.RandomSearch(hypermodel, objective=objective(), max_trials=6,
    ...                         directory="search", project_name="trials")
    >>> tuner.search()
    """

    def __init__(self, recipe, data, directory, preset="paper", config=None, sets=(),
                 epochs=None, space=None, trial_log=False, name=None):
        super().__init__(name=name or recipe)
        self.recipe = recipe
        self.recipe_class = get_recipe(recipe)
        self.data = data
        self.directory = directory
        self.preset = preset
        self.full_config = presets.resolve(recipe, preset, sets, config=config)
        self.trial_base = presets.resolve(recipe, preset, epochs=epochs, config=self.full_config)
        self.space = spaces.check_space(presets.search_space(recipe, preset)
                                        if space is None else space)
        spaces.check_keys(self.full_config, self.space)
        self.trial_log = trial_log
        self._build_seconds = 0.0  # of the last `build`, counted in its trial's `seconds`
        schema = get_schema(self.full_config["edition"])
        self.tasks = self.recipe_class(self.full_config, data, directory, preset).tasks
        self.components = component_names(schema, self.tasks)

    # ------------------------------------------------------------------ configs

    def declare_hyperparameters(self, hp):
        spaces.declare(hp, self.space, self.full_config)

    def values(self, hp):
        """The trial's values of the space's hyperparameters (the tuner's own, `tuner/...`,
        left out)."""
        return {name: hp.get(name) for name in self.space if name in hp.values}

    def config_of(self, values, full_length=False):
        """The run config of hyperparameter values: the space's keys set to them, at the
        search's epochs (or the preset's with `full_length`), sharing prepared work."""
        base = self.full_config if full_length else self.trial_base
        config = spaces.apply_values(base, self.space, values)
        shared = os.path.join(os.path.abspath(self.directory), "shared")
        return self.recipe_class.shared_preparation(config, shared)

    def trial_config(self, hp, full_length=False):
        """`config_of` a trial's values."""
        return self.config_of(self.values(hp), full_length)

    def build_recipe(self, hp, out):
        return self.recipe_class(self.trial_config(hp), self.data, out, preset=self.preset)

    # ------------------------------------------------------------------ KerasTuner

    def build(self, hp):
        started = time.perf_counter()
        self.declare_hyperparameters(hp)
        model = self.build_recipe(hp, self.directory).build_model()
        self._build_seconds = time.perf_counter() - started
        return model

    def fit(self, hp, model, *args, epochs=None, initial_epoch=0, callbacks=None, **kwargs):
        callbacks = list(callbacks or [])
        checkpoints = [c for c in callbacks if isinstance(c, tuner_utils.SaveBestEpoch)]
        # Epoch by epoch reports would restart with every stage; the result is reported once.
        own = [c for c in callbacks if isinstance(c, tuner_utils.TunerCallback)]
        callbacks = [c for c in callbacks if c not in checkpoints and c not in own]
        run_dir = (os.path.dirname(checkpoints[0].filepath) if checkpoints else os.path.join(
            self.directory, "trials", run_directory.config_digest(hp.values)))
        recipe = self.build_recipe(hp, run_dir)
        if epochs is not None:
            recipe.config["stages"] = budget_stages(recipe.config["stages"], int(epochs),
                                                    int(initial_epoch or 0))
        os.makedirs(run_dir, exist_ok=True)
        with trial_output(os.path.join(run_dir, TRIAL_LOG) if self.trial_log else None):
            started = time.perf_counter()
            report = recipe.run(network=model, callbacks=callbacks)
            seconds = time.perf_counter() - started
        if checkpoints:  # the best epoch's weights (model.keras), where the tuner keeps them
            model.load_weights(os.path.join(run_dir, "model.keras"))
            for checkpoint in checkpoints:
                model.save_weights(checkpoint.filepath)
        results = {f"val_{name}": float(value) for name, value in report["validation"].items()
                   if np.ndim(value) == 0}
        # What `affectkit train` does: build the network and run the recipe.
        results["seconds"] = self._build_seconds + seconds
        return results


def epochs_of(config):
    """Every stage's epochs in all (Hyperband's `max_epochs` for a search)."""
    return int(sum(int(stage["epochs"]) for stage in config["stages"].values()))

