"""The five published ABAW systems as recipes: a shared run template (`Recipe`) and one
module per paper that says only what the paper adds.

    from affectkit import presets
    from affectkit.recipes import get_recipe
    config = presets.resolve("zhang2020_mtanet", "cpu_demo", sets=["data.batch_size=16"])
    report = get_recipe("zhang2020_mtanet")(config, "demo/data", "runs/mtanet").run()

Importing this package is light: a recipe module (and TensorFlow) loads on `get_recipe`.
"""

import importlib

from affectkit.presets import RECIPES

# Recipe name -> the class in `affectkit.recipes.<name>`.
_CLASSES = {
    "zhang2020_mtanet": "MTANetRecipe",
    "do2020_stat_temporal": "StatTemporalRecipe",
    "liu2023_multimodal_ensemble": "MultimodalEnsembleRecipe",
    "haider2022_mtl_ensemble": "RegionAttentionRecipe",
    "phan2022_regnet_transformer": "RegNetTransformerRecipe",
}


def get_recipe(name):
    """The `Recipe` class of a recipe name."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}: expected one of {', '.join(RECIPES)}.")
    module = importlib.import_module(f"affectkit.recipes.{name}")
    return getattr(module, _CLASSES[name])

