"""zhang2020_mtanet: MTANet (Zhang & Gu, ABAW 2020). Same as `affectkit train zhang2020_mtanet ...`;
`--help` lists the options."""
import sys

from affectkit.cli import run_recipe_script

if __name__ == "__main__":
    sys.exit(run_recipe_script("zhang2020_mtanet"))
