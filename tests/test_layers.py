"""Temporal, transformer and region-attention layers: the shared Keras checks, plus numerics
against independent NumPy references."""

import keras
import numpy as np
import pytest

from affectkit.models.layers.region_attention import RegionAttention
from affectkit.models.layers import (
    FusionBlock,
    SegmentLSTM,
    StackedBiLSTM,
    StatPooling,
    run_segments,
)
from affectkit.models.layers.transformer import (
    SelfAttentionBlock,
    SinusoidalPositionEncoding,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from tests.keras_checks import assert_reloads_in_fresh_process, check_layer

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype("float32")


# --------------------------------------------------------------------------- NumPy references


def _np_layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_gelu(x):  # exact (erf) GELU, Keras's default
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(lambda v: erf(v / sqrt(2.0)))(x))


def _np_mha(x, mha, key_mask=None):
    """Multi-head self-attention from a Keras MultiHeadAttention's weights."""
    wq, bq = [keras.ops.convert_to_numpy(w) for w in mha._query_dense.weights]
    wk, bk = [keras.ops.convert_to_numpy(w) for w in mha._key_dense.weights]
    wv, bv = [keras.ops.convert_to_numpy(w) for w in mha._value_dense.weights]
    wo, bo = [keras.ops.convert_to_numpy(w) for w in mha._output_dense.weights]
    q = np.einsum("btd,dnh->btnh", x, wq) + bq
    k = np.einsum("btd,dnh->btnh", x, wk) + bk
    v = np.einsum("btd,dnh->btnh", x, wv) + bv
    scores = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = np.where(key_mask[:, None, None, :], scores, -1e9)
    probs = _np_softmax(scores)
    heads = np.einsum("bnqk,bknh->bqnh", probs, v)
    return np.einsum("bqnh,nhd->bqd", heads, wo) + bo


def _np_encoder_layer(x, layer, key_mask=None):
    """One transformer encoder layer in NumPy from the Keras layer's weights."""
    g1, b1 = [keras.ops.convert_to_numpy(w) for w in layer.attention_norm.weights]
    g2, b2 = [keras.ops.convert_to_numpy(w) for w in layer.mlp_norm.weights]
    w1, c1 = [keras.ops.convert_to_numpy(w) for w in layer.mlp_hidden.weights]
    w2, c2 = [keras.ops.convert_to_numpy(w) for w in layer.mlp_output.weights]
    act = _np_gelu if layer.activation == "gelu" else (lambda v: np.maximum(v, 0.0))

    def mlp(v):
        return act(v @ w1 + c1) @ w2 + c2

    eps = layer.epsilon
    if layer.norm_first:
        x = x + _np_mha(_np_layer_norm(x, g1, b1, eps), layer.attention, key_mask)
        return x + mlp(_np_layer_norm(x, g2, b2, eps))
    x = _np_layer_norm(x + _np_mha(x, layer.attention, key_mask), g1, b1, eps)
    return _np_layer_norm(x + mlp(x), g2, b2, eps)


def _np_lstm(x, kernel, recurrent, bias, h, c):
    """Keras LSTM (gates i, f, c, o; sigmoid / tanh) in NumPy; returns outputs, h, c."""

    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, 1), h, c


def _np_conv2d_same(x, kernel, bias):
    """Stride-1 'same' convolution, NHWC, kernel (kh, kw, cin, cout)."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    height, width = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],), dtype="float64")
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwc,co->bhwo", padded[:, i : i + height, j : j + width], kernel[i, j])
    return out + bias


def _np_batch_norm(x, bn):
    gamma, beta, mean, var = [keras.ops.convert_to_numpy(w) for w in bn.weights]
    return (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta


def _randomise_weights(layer, seed=1):
    """Random values for every weight, variances positive, so inference-mode BN and biases
    take part in the comparison."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        value = rng.standard_normal(tuple(weight.shape)).astype("float32") * 0.5
        if "variance" in weight.path:
            value = np.abs(value) + 0.5
        weight.assign(value)


# --------------------------------------------------------------------------- shared checks


@pytest.mark.parametrize(
    "cls, kwargs, data, expected",
    [
        (StatPooling, {"axis": 1}, _rand(2, 5, 3), (2, 9)),
        (StackedBiLSTM, {"units": 4, "num_layers": 2, "dropout": 0.1}, _rand(2, 5, 3), (2, 8)),
        (
            StackedBiLSTM,
            {"units": 3, "num_layers": 1, "dropout": 0.0, "return_sequences": True},
            _rand(2, 5, 3),
            (2, 5, 6),
        ),
        (
            FusionBlock,
            {"units": 6, "dropout": 0.1, "activation": "relu", "use_layer_norm": True},
            [_rand(2, 5, 3), _rand(2, 5, 4)],
            (2, 5, 6),
        ),
        (FusionBlock, {"units": 6, "activation": None}, [_rand(2, 5, 3), _rand(2, 5, 2)], (2, 5, 6)),
        (SinusoidalPositionEncoding, {"max_length": 16}, _rand(2, 5, 6), (2, 5, 6)),
        (
            TransformerEncoderLayer,
            {"num_heads": 2, "head_dim": 3, "mlp_dim": 8, "dropout": 0.1, "activation": "gelu", "norm_first": True, "epsilon": 1e-5},
            _rand(2, 5, 6),
            (2, 5, 6),
        ),
        (
            TransformerEncoder,
            {
                "num_layers": 2,
                "num_heads": 2,
                "head_dim": 3,
                "mlp_dim": 8,
                "dropout": 0.1,
                "activation": "relu",
                "norm_first": False,
                "positional_encoding": True,
                "max_length": 8,
                "positional_dropout": 0.3,
                "final_norm": True,
            },
            _rand(2, 5, 6),
            (2, 5, 6),
        ),
        (SelfAttentionBlock, {"num_heads": 2, "head_dim": 3, "dropout": 0.0}, _rand(2, 5, 6), (2, 5, 6)),
        (SelfAttentionBlock, {"num_heads": 2, "head_dim": 3, "output_dim": 4}, _rand(2, 5, 6), (2, 5, 4)),
        (
            RegionAttention,
            {"num_regions": 3, "stem_channels": 4, "token_width": 5, "embed_channels": 2},
            _rand(2, 6, 6, 4),
            (2, 3, 5),
        ),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_check_layer(cls, kwargs, data, expected):
    check_layer(cls, kwargs, data, expected_output_shape=expected)


def test_segment_lstm_check_layer():
    segment, h, c = _rand(2, 4, 3), _rand(2, 5), _rand(2, 5)
    outputs = check_layer(SegmentLSTM, {"units": 5, "dropout": 0.0}, [segment, h, c])
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 5), (2, 5), (2, 5)]
    outputs = check_layer(SegmentLSTM, {"units": 5}, [segment])
    assert tuple(outputs[0].shape) == (2, 4, 5)


def test_region_attention_returns_maps_through_check_layer():
    tokens, maps = check_layer(
        RegionAttention,
        {"num_regions": 3, "stem_channels": 4, "token_width": 5, "embed_channels": 2, "return_attention": True},
        _rand(2, 6, 6, 4),
    )
    assert tuple(tokens.shape) == (2, 3, 5)
    assert tuple(maps.shape) == (2, 6, 6, 3)


# --------------------------------------------------------------------------- numerics


def test_stat_pooling_matches_numpy():
    x = _rand(3, 7, 4)
    out = keras.ops.convert_to_numpy(StatPooling()(x))
    expected = np.concatenate([x.max(1), x.min(1), x.mean(1)], axis=-1)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_stat_pooling_mask_excludes_padded_steps():
    x = _rand(3, 6, 2)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=bool)
    out = keras.ops.convert_to_numpy(StatPooling()(x, mask=mask))
    for b in range(2):
        valid = x[b][mask[b]]
        expected = np.concatenate([valid.max(0), valid.min(0), valid.mean(0)])
        np.testing.assert_allclose(out[b], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[2], np.zeros(6))  # nothing valid -> zeros

    # The same through Keras masking: padded steps are zeros.
    padded = np.where(mask[:2, :, None], x[:2], 0.0).astype("float32")
    inputs = keras.Input((6, 2))
    model = keras.Model(inputs, StatPooling()(keras.layers.Masking(0.0)(inputs)))
    np.testing.assert_allclose(model.predict(padded, verbose=0), out[:2], rtol=1e-6, atol=1e-6)


def test_stacked_bilstm_concatenates_both_directions():
    layer = StackedBiLSTM(units=3, num_layers=1, dropout=0.0)
    x = _rand(2, 5, 4)
    out = keras.ops.convert_to_numpy(layer(x))
    forward, backward = layer.bilstms[0].forward_layer, layer.bilstms[0].backward_layer
    fk, fr, fb = [keras.ops.convert_to_numpy(w) for w in forward.weights]
    bk, br, bb = [keras.ops.convert_to_numpy(w) for w in backward.weights]
    zeros = np.zeros((2, 3), "float32")
    _, h_forward, _ = _np_lstm(x, fk, fr, fb, zeros, zeros)
    _, h_backward, _ = _np_lstm(x[:, ::-1], bk, br, bb, zeros, zeros)
    np.testing.assert_allclose(out, np.concatenate([h_forward, h_backward], -1), atol=1e-5)


def test_segment_lstm_carried_state_equals_one_pass():
    layer = SegmentLSTM(units=5)
    x = _rand(2, 11, 3)
    full, h_full, c_full = [keras.ops.convert_to_numpy(t) for t in layer(x)]
    chained, (h, c) = run_segments(layer, x, segment_length=4)  # 4 + 4 + 3 steps
    np.testing.assert_allclose(keras.ops.convert_to_numpy(chained), full, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(h), h_full, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(c), c_full, atol=1e-5)

    # Independent reference: a NumPy LSTM over the whole sequence.
    kernel, recurrent, bias = [keras.ops.convert_to_numpy(w) for w in layer.lstm.weights]
    zeros = np.zeros((2, 5), "float32")
    expected, _, _ = _np_lstm(x, kernel, recurrent, bias, zeros, zeros)
    np.testing.assert_allclose(full, expected, atol=1e-5)

    # Starting from zeros differs from starting from the carried state.
    restarted, _, _ = layer(x[:, 4:8])
    assert not np.allclose(keras.ops.convert_to_numpy(restarted), full[:, 4:8], atol=1e-3)


def test_segment_lstm_state_inputs_in_functional_model():
    layer = SegmentLSTM(units=4)
    segment, h_in, c_in = keras.Input((3, 2)), keras.Input((4,)), keras.Input((4,))
    model = keras.Model([segment, h_in, c_in], layer([segment, h_in, c_in]))
    x, h, c = _rand(2, 3, 2), _rand(2, 4), _rand(2, 4)
    out = model.predict([x, h, c], verbose=0)
    kernel, recurrent, bias = [keras.ops.convert_to_numpy(w) for w in layer.lstm.weights]
    expected = _np_lstm(x, kernel, recurrent, bias, h, c)
    for got, want in zip(out, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_fusion_block_is_dense_on_concatenation():
    layer = FusionBlock(4, activation=None)
    a, b = _rand(2, 3, 2), _rand(2, 3, 5)
    out = keras.ops.convert_to_numpy(layer([a, b]))
    kernel, bias = [keras.ops.convert_to_numpy(w) for w in layer.projection.weights]
    np.testing.assert_allclose(out, np.concatenate([a, b], -1) @ kernel + bias, atol=1e-5)


def test_sinusoidal_encoding_matches_formula():
    length, width = 7, 6
    x = _rand(2, length, width)
    out = keras.ops.convert_to_numpy(SinusoidalPositionEncoding(max_length=10)(x))
    expected = np.zeros((length, width))
    for pos in range(length):
        for i in range(width):
            angle = pos / 10000 ** ((i - i % 2) / width)
            expected[pos, i] = np.sin(angle) if i % 2 == 0 else np.cos(angle)
    np.testing.assert_allclose(out - x, np.broadcast_to(expected, x.shape), atol=1e-5)


def test_sinusoidal_encoding_rejects_long_sequences():
    with pytest.raises(ValueError, match="max_length"):
        SinusoidalPositionEncoding(max_length=4)(keras.Input((5, 6)))


@pytest.mark.parametrize("norm_first, activation", [(True, "gelu"), (False, "relu")])
def test_transformer_encoder_layer_matches_numpy(norm_first, activation):
    layer = TransformerEncoderLayer(
        num_heads=2, head_dim=3, mlp_dim=8, dropout=0.0, activation=activation, norm_first=norm_first
    )
    x = _rand(2, 5, 6)
    layer.build(x.shape)
    _randomise_weights(layer)
    out = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(out, _np_encoder_layer(x.astype("float64"), layer), atol=1e-4)


def test_transformer_padding_mask():
    layer = TransformerEncoderLayer(num_heads=2, head_dim=3, mlp_dim=8, dropout=0.0, norm_first=True)
    x = _rand(2, 5, 6)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    out = keras.ops.convert_to_numpy(layer(x, mask=mask))
    np.testing.assert_allclose(out, _np_encoder_layer(x.astype("float64"), layer, mask), atol=1e-4)
    # Valid steps do not see the padded ones: same as running on the truncated sequence.
    truncated = keras.ops.convert_to_numpy(layer(x[:1, :3]))
    np.testing.assert_allclose(out[:1, :3], truncated, atol=1e-5)


def test_transformer_encoder_stack_and_keras_mask():
    encoder = TransformerEncoder(
        num_layers=2, num_heads=2, head_dim=3, mlp_dim=8, dropout=0.0, positional_encoding=True, max_length=8
    )
    x = _rand(1, 6, 4)
    x[:, 4:] = 0.0
    inputs = keras.Input((6, 4))
    model = keras.Model(inputs, encoder(keras.layers.Masking(0.0)(inputs)))
    masked = model.predict(x, verbose=0)
    truncated = keras.ops.convert_to_numpy(encoder(x[:, :4]))
    np.testing.assert_allclose(masked[:, :4], truncated, atol=1e-5)


def test_self_attention_block_matches_numpy_without_residual():
    layer = SelfAttentionBlock(num_heads=2, head_dim=3)
    x = _rand(2, 5, 6)
    out = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(out, _np_mha(x.astype("float64"), layer.attention), atol=1e-5)


def _naive_region_attention(x, layer):
    """The authors' formulation: R separate branches, one region at a time, in NumPy."""
    regions, embed = layer.num_regions, layer.embed_channels
    channels = x.shape[-1]

    def conv(v, conv_layer):
        kernel, bias = [keras.ops.convert_to_numpy(w) for w in conv_layer.weights]
        return _np_conv2d_same(v, kernel, bias)

    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    s = relu(_np_batch_norm(conv(x, layer.stem_conv), layer.stem_bn))
    s = relu(_np_batch_norm(conv(s, layer.reduce_conv), layer.reduce_bn))
    maps = 1.0 / (1.0 + np.exp(-conv(s, layer.map_conv)))

    k1, b1, k2, b2 = [
        keras.ops.convert_to_numpy(w)
        for w in (layer.region_kernel, layer.region_bias, layer.pointwise_kernel, layer.pointwise_bias)
    ]
    bn1 = [keras.ops.convert_to_numpy(w) for w in layer.region_bn.weights]
    bn2 = [keras.ops.convert_to_numpy(w) for w in layer.region_pointwise_bn.weights]
    kt, bt = [keras.ops.convert_to_numpy(w) for w in layer.token_projection.weights]
    assert k1.shape == (3, 3, channels, regions, embed)
    tokens = []
    for r in range(regions):
        part = slice(r * embed, (r + 1) * embed)
        refined = x * maps[..., r : r + 1] + x
        y = _np_conv2d_same(refined, k1[..., r, :], b1[r])  # region r's own 3x3 conv
        g, b, m, v = [w[part] for w in bn1]
        y = relu((y - m) / np.sqrt(v + layer.region_bn.epsilon) * g + b)
        y = np.einsum("bhwe,ef->bhwf", y, k2[r]) + b2[r]  # region r's own 1x1 conv
        g, b, m, v = [w[part] for w in bn2]
        y = relu((y - m) / np.sqrt(v + layer.region_pointwise_bn.epsilon) * g + b)
        tokens.append(y.mean(axis=(1, 2)) @ kt[r] + bt[r])
    return np.stack(tokens, 1), maps


def test_region_attention_batched_equals_per_region_loop():
    layer = RegionAttention(num_regions=3, stem_channels=4, token_width=5, embed_channels=2, return_attention=True)
    x = _rand(2, 5, 5, 4)
    layer.build(x.shape)
    _randomise_weights(layer)
    tokens, maps = [keras.ops.convert_to_numpy(t) for t in layer(x, training=False)]
    assert tokens.shape == (2, 3, 5) and maps.shape == (2, 5, 5, 3)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    expected_tokens, expected_maps = _naive_region_attention(x.astype("float64"), layer)
    np.testing.assert_allclose(maps, expected_maps, atol=1e-5)
    np.testing.assert_allclose(tokens, expected_tokens, rtol=1e-4, atol=1e-4)


def test_region_attention_default_paper_shapes():
    layer = RegionAttention(return_attention=True)
    tokens, maps = layer(keras.Input((17, 17, 48)))
    assert tuple(tokens.shape) == (None, 17, 16)
    assert tuple(maps.shape) == (None, 17, 17, 17)
    assert layer.stem_conv.kernel.shape == (3, 3, 48, 68)
    assert tuple(layer.region_kernel.shape) == (3, 3, 48, 17, 16)


# --------------------------------------------------------------------------- save / reload


def test_tiny_model_reloads_in_fresh_process(tmp_path):
    frames, video = keras.Input((8, 8, 6), name="frame"), keras.Input((6, 5), name="video")
    audio = keras.Input((6, 3), name="audio")

    tokens, maps = RegionAttention(num_regions=3, stem_channels=4, token_width=4, embed_channels=2, return_attention=True)(frames)
    tokens = TransformerEncoder(1, 2, 2, 8, dropout=0.3, activation="gelu", positional_encoding=True, max_length=4)(tokens)
    frame_vector = keras.layers.Flatten()(tokens)

    fused = FusionBlock(6, activation=None, use_layer_norm=True)([video, audio])
    attended = SelfAttentionBlock(num_heads=2, head_dim=3)(fused)
    encoded = TransformerEncoderLayer(2, 3, 8, dropout=0.1, norm_first=True)(fused)
    sequence, _, _ = SegmentLSTM(4)(keras.layers.Concatenate()([attended, encoded]))
    summary = keras.layers.Concatenate()(
        [StatPooling()(sequence), StackedBiLSTM(units=3, num_layers=2)(sequence), frame_vector]
    )
    model = keras.Model(
        {"frame": frames, "video": video, "audio": audio},
        {"expr": keras.layers.Dense(8, activation="softmax", name="expr")(summary), "maps": maps},
    )
    model.compile(optimizer="adam", loss={"expr": "categorical_crossentropy", "maps": None})
    inputs = {"frame": _rand(2, 8, 8, 6), "video": _rand(2, 6, 5), "audio": _rand(2, 6, 3)}
    targets = {"expr": np.eye(8, dtype="float32")[[1, 3]]}
    model.fit(inputs, targets, epochs=1, verbose=0)  # moves the BN statistics off their defaults
    assert_reloads_in_fresh_process(model, inputs, tmp_path)
