"""Models: backbones (one file per family), layers (the papers' blocks), and `AffectModel`,
which composes them (backbone -> neck -> temporal block -> heads)."""

from affectkit.models.affect_model import AffectModel, label_schema  # noqa: F401
