"""Custom layers, each registered under the `affectkit` package for safe-mode reloading:
the papers' blocks, which `AffectModel` composes."""

from affectkit.models.layers.channel_pooling import ChannelPooling  # noqa: F401
from affectkit.models.layers.frames import FoldFrames, UnfoldFrames  # noqa: F401
from affectkit.models.layers.fusion import FusionBlock  # noqa: F401
from affectkit.models.layers.heads import MLPHead, PerTokenClassifier  # noqa: F401
from affectkit.models.layers.necks import AvgMaxNeck, RegionTokenNeck  # noqa: F401
from affectkit.models.layers.recurrent import SegmentLSTM, StackedBiLSTM, run_segments  # noqa: F401
from affectkit.models.layers.region_attention import RegionAttention  # noqa: F401
from affectkit.models.layers.stat_pooling import StatPooling  # noqa: F401
from affectkit.models.layers.temporal import (  # noqa: F401
    ConcatAttentionTransformer,
    StatBiLSTMFusion,
)
from affectkit.models.layers.transformer import (  # noqa: F401
    SelfAttentionBlock,
    SinusoidalPositionEncoding,
    TransformerEncoder,
    TransformerEncoderLayer,
)
