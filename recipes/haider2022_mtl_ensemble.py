"""haider2022_mtl_ensemble: two-view ensemble of multi-task region-attention networks (Haider et al., ABAW4 2022). Same as `affectkit train haider2022_mtl_ensemble ...`; `--help` lists the options."""
import sys

from affectkit.cli import run_recipe_script

if __name__ == "__main__":
    sys.exit(run_recipe_script("haider2022_mtl_ensemble"))
