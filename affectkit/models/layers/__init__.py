"""Custom layers, each registered under the `affectkit` package for safe-mode reloading."""

from affectkit.models.layers.attention import ChannelPooling  # noqa: F401
from affectkit.models.layers.region_attention import RegionAttention  # noqa: F401
from affectkit.models.layers.temporal import (  # noqa: F401
    FusionBlock,
    SegmentLSTM,
    StackedBiLSTM,
    StatPooling,
    run_segments,
)
from affectkit.models.layers.transformer import (  # noqa: F401
    SelfAttentionBlock,
    SinusoidalPositionEncoding,
    TransformerEncoder,
    TransformerEncoderLayer,
)
