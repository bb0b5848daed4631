"""phan2022_regnet_transformer: RegNet + attention + transformer over clips of faces (Phan et al., ABAW3 2022). Same as `affectkit train phan2022_regnet_transformer ...`; `--help` lists the options."""
import sys

from affectkit.cli import run_recipe_script

if __name__ == "__main__":
    sys.exit(run_recipe_script("phan2022_regnet_transformer"))
