"""Hyperparameter search over any recipe with KerasTuner.

    spaces.py      search spaces as data (dotted preset keys -> choices or ranges)
    hypermodel.py  RecipeHyperModel: build(hp) -> the recipe's AffectModel, fit -> ABAW scores
    search.py      `affectkit tune`: tuner, resume, chief/worker, one line per trial
    results.py     results.csv / results.md / plots / best_config.json of a search directory

Importing this package is light; `RecipeHyperModel` (and TensorFlow) loads on first use:

    from affectkit.tuning import RecipeHyperModel, objective
    tuner = keras_tuner.BayesianOptimization(
        RecipeHyperModel("zhang2020_mtanet", "demo/data", "search", preset="cpu_demo"),
        objective=objective("score"), max_trials=6, directory="search", project_name="trials")
"""

_LAZY = {"RecipeHyperModel": "hypermodel", "objective": "hypermodel",
         "budget_stages": "hypermodel", "run_search": "search"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"affectkit.tuning.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'affectkit.tuning' has no attribute {name!r}")
