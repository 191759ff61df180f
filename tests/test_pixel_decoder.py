"""Pixel decoder: deformable-attention cores, MSDeformAttn, position encoding, decoder.

* The fast core ``ms_deform_attn`` equals the per-level ``grid_sample`` reference
  (forward and gradients w.r.t. value, sampling locations and attention weights),
  including samples outside [0, 1] and exactly on pixel centres, edges and the map
  borders (level sizes are powers of two so that those locations are exact in
  floating point and both implementations take the same branch).
* The decoder's state dict has exactly the upstream keys and shapes: the
  ``sem_seg_head.pixel_decoder.*`` rows of the official R50 and ConvNeXt-L
  checkpoints' key/shape/dtype tables are embedded below and parsed.
* Tiny decoders (conv_dim 64, one encoder layer) give the documented output shapes
  and stay float32 under bfloat16 autocast.
"""

from __future__ import annotations

import math

import pytest
import torch

import vocabseg.models.fcclip.ms_deform_attn as msda
from vocabseg.models.fcclip.ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference
from vocabseg.models.fcclip.pixel_decoder import MSDeformAttnPixelDecoder
from vocabseg.models.fcclip.position_encoding import PositionEmbeddingSine

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
CONVNEXT_L_CHANNELS = {"res2": 192, "res3": 384, "res4": 768, "res5": 1536}


# ------------------------------------------------------------------ cores
# Power-of-two level sizes: every location below is a dyadic rational, so the
# reference's (2 * loc - 1 + 1) * W / 2 - 1/2 and our loc * W - 1/2 agree exactly.
SHAPES = torch.tensor([[2, 4], [4, 8], [8, 4]])


def _border_values(size: int) -> list[float]:
    """Normalised coordinates on and around the edges and pixel centres of a map of ``size``."""
    return [
        0.0,  # outer edge: pixel coordinate -0.5
        1.0,  # outer edge at the far side
        -0.5 / size,  # pixel coordinate -1: left corner off-map (weight 1), right corner on-map
        1.0 + 0.5 / size,  # pixel coordinate size: both corners off-map
        -1.0 / size,  # pixel coordinate -1.5: fully outside
        1.0 + 1.0 / size,  # fully outside at the far side
        0.5 / size,  # centre of the first pixel
        1.0 - 0.5 / size,  # centre of the last pixel
        2.0 / size,  # an interior pixel edge
        -0.75,  # far outside
        1.75,
        (size - 1.25) / size,  # between the last two pixel centres
    ]


def _core_inputs(dtype: torch.dtype, seed: int, n: int = 2, lq: int = 9, heads: int = 2, dim: int = 3, points: int = 4):
    gen = torch.Generator().manual_seed(seed)
    levels = SHAPES.shape[0]
    s = int(SHAPES.prod(1).sum())
    value = torch.randn(n, s, heads, dim, generator=gen, dtype=dtype)
    locations = torch.rand(n, lq, heads, levels, points, 2, generator=gen, dtype=dtype) * 1.6 - 0.3
    weights = torch.rand(n, lq, heads, levels, points, generator=gen, dtype=dtype)
    # overwrite the x or y coordinate of about half the samples with border values of their level
    for level, (h, w) in enumerate(SHAPES.tolist()):
        for axis, size in ((0, w), (1, h)):
            candidates = torch.tensor(_border_values(size), dtype=dtype)
            coord = locations[:, :, :, level, :, axis]
            pick = torch.randint(0, len(candidates), coord.shape, generator=gen)
            use = torch.rand(coord.shape, generator=gen) < 0.5
            coord[use] = candidates[pick][use]
    return value, SHAPES, locations, weights


def _value_and_grads(core, value, shapes, locations, weights, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    out = core(leaves[0], shapes, leaves[1], leaves[2])
    out.backward(grad_out)
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_core_equals_reference_float64(seed):
    value, shapes, locations, weights = _core_inputs(torch.float64, seed)
    outside = ((locations < 0) | (locations > 1)).any(-1)
    assert outside.any() and (~outside).any()
    grad_out = torch.randn(2, 9, 2 * 3, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    ref = _value_and_grads(ms_deform_attn_reference, value, shapes, locations, weights, grad_out)
    ours = _value_and_grads(ms_deform_attn, value, shapes, locations, weights, grad_out)
    for name, a, b in zip(("output", "d value", "d locations", "d weights"), ours, ref):
        assert a.shape == b.shape, name
        assert a.dtype == torch.float64, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
    # the gradients are not trivially zero anywhere
    assert all(g.abs().sum() > 0 for g in ours[1:])


def test_fast_core_equals_reference_float32_larger():
    gen = torch.Generator().manual_seed(5)
    shapes = torch.tensor([[3, 5], [6, 10], [12, 20]])
    s = int(shapes.prod(1).sum())
    n, lq, heads, dim, levels, points = 2, 40, 4, 8, 3, 2
    value = torch.randn(n, s, heads, dim, generator=gen)
    locations = torch.rand(n, lq, heads, levels, points, 2, generator=gen) * 1.4 - 0.2
    weights = torch.rand(n, lq, heads, levels, points, generator=gen).softmax(-1)
    grad_out = torch.randn(n, lq, heads * dim, generator=gen)
    ref = _value_and_grads(ms_deform_attn_reference, value, shapes, locations, weights, grad_out)
    ours = _value_and_grads(ms_deform_attn, value, shapes, locations, weights, grad_out)
    for name, a, b in zip(("output", "d value", "d locations", "d weights"), ours, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


def test_fast_core_gradcheck():
    gen = torch.Generator().manual_seed(7)
    shapes = torch.tensor([[2, 3], [3, 5]])
    value = torch.randn(1, 21, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    # away from pixel-grid lines (where bilinear sampling has kinks) by construction:
    # pixel coordinates = integer + 0.25 + 0.5 * uniform, some off the map
    cells = torch.randint(-2, 6, (1, 4, 2, 2, 2, 2), generator=gen).to(torch.float64)
    frac = 0.25 + 0.5 * torch.rand(cells.shape, generator=gen, dtype=torch.float64)
    size_xy = shapes.flip(-1).to(torch.float64)[:, None, :]
    locations = ((cells + frac + 0.5) / size_xy).requires_grad_()
    weights = torch.rand(1, 4, 2, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, l, w: ms_deform_attn(v, shapes, l, w), (value, locations, weights))


def test_fast_core_partial_gradients_and_no_grad():
    value, shapes, locations, weights = _core_inputs(torch.float64, 3)
    grad_out = torch.ones(2, 9, 6, dtype=torch.float64)
    full = _value_and_grads(ms_deform_attn, value, shapes, locations, weights, grad_out)
    only_value = value.clone().requires_grad_()
    ms_deform_attn(only_value, shapes, locations, weights).backward(grad_out)
    torch.testing.assert_close(only_value.grad, full[1], rtol=0, atol=0)
    only_locations = locations.clone().requires_grad_()
    ms_deform_attn(value, shapes, only_locations, weights).backward(grad_out)
    torch.testing.assert_close(only_locations.grad, full[2], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(ms_deform_attn(value, shapes, locations, weights), full[0], rtol=0, atol=0)


def test_core_rejects_inconsistent_shapes():
    value, shapes, locations, weights = _core_inputs(torch.float32, 0)
    with pytest.raises(ValueError, match="spatial shapes"):
        ms_deform_attn(value[:, :-1], shapes, locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, shapes, locations, weights[..., :-1])


# ------------------------------------------------------------ MSDeformAttn
def _module_inputs(d_model=32, n=2, lq=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[2, 4], [4, 8], [8, 16]])
    s = int(shapes.prod(1).sum())
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    query = torch.randn(n, lq, d_model, generator=gen)
    reference = torch.rand(n, lq, 3, 2, generator=gen)
    inputs = torch.randn(n, s, d_model, generator=gen)
    return query, reference, inputs, shapes, starts


def test_msdeformattn_shapes_init_and_core():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    assert attn.sampling_offsets.weight.shape == (4 * 3 * 2 * 2, 32)
    assert attn.attention_weights.weight.shape == (4 * 3 * 2, 32)
    assert attn.value_proj.weight.shape == attn.output_proj.weight.shape == (32, 32)
    # upstream init: zero offset/attention weights, a ring of directions in the offset bias
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
    assert not attn.attention_weights.bias.any() and not attn.value_proj.bias.any()
    bias = attn.sampling_offsets.bias.view(4, 3, 2, 2)
    expected_dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # 4 heads: 0, 90, 180, 270 deg
    for point in range(2):
        torch.testing.assert_close(
            bias[:, :, point], (point + 1) * expected_dirs[:, None].expand(4, 3, 2), atol=1e-6, rtol=0
        )
    default = MSDeformAttn()
    assert default.sampling_offsets.bias.view(8, 3, 4, 2)[1, 0, 0].tolist() == pytest.approx([1.0, 1.0])

    # random parameters so that offsets and attention are not trivial
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    query, reference, inputs, shapes, starts = _module_inputs()
    out = attn(query, reference, inputs, shapes, starts)
    assert out.shape == (2, 7, 32)
    original = msda.ms_deform_attn
    try:
        msda.ms_deform_attn = ms_deform_attn_reference
        expected = attn(query, reference, inputs, shapes, starts)
    finally:
        msda.ms_deform_attn = original
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_msdeformattn_padding_mask():
    torch.manual_seed(1)
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    query, reference, inputs, shapes, starts = _module_inputs(seed=1)
    none_mask = attn(query, reference, inputs, shapes, starts, None)
    all_valid = attn(query, reference, inputs, shapes, starts, torch.zeros(inputs.shape[:2], dtype=torch.bool))
    torch.testing.assert_close(none_mask, all_valid, rtol=0, atol=0)
    mask = torch.zeros(inputs.shape[:2], dtype=torch.bool)
    mask[:, ::3] = True
    masked = attn(query, reference, inputs, shapes, starts, mask)
    changed = inputs.clone()
    changed[mask] += 10.0  # padded tokens must not matter
    torch.testing.assert_close(attn(query, reference, changed, shapes, starts, mask), masked, rtol=0, atol=0)
    assert not torch.allclose(masked, none_mask)


# ------------------------------------------------------ position encoding
def test_position_embedding_sine_values():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    pos = pe(torch.zeros(2, 3, 2, 5))
    assert pos.shape == (2, 8, 2, 5) and pos.dtype == torch.float32
    scale, eps = 2 * math.pi, 1e-6
    y = torch.tensor([1.0, 2.0]) / (2 + eps) * scale  # per row
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) / (5 + eps) * scale  # per column
    # channels: y half then x half; within a half sin/cos pairs at frequencies T^(-2*(i//2)/F)
    for offset, coord, axis in ((0, y, 0), (4, x, 1)):
        for i in range(4):
            arg = coord / 10000 ** (2 * (i // 2) / 4)
            expected = arg.sin() if i % 2 == 0 else arg.cos()
            channel = pos[0, offset + i]
            got = channel[:, 0] if axis == 0 else channel[0, :]
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pos[0], pos[1])
    masked = pe(torch.zeros(1, 3, 2, 5), mask=torch.zeros(1, 2, 5, dtype=torch.bool))
    torch.testing.assert_close(masked, pos[:1])
    with pytest.raises(ValueError):
        PositionEmbeddingSine(scale=1.0, normalize=False)
    assert PositionEmbeddingSine()(torch.zeros(1, 1, 3, 4)).shape == (1, 256, 3, 4)
    unnormalised = PositionEmbeddingSine(num_pos_feats=4, normalize=False)(torch.zeros(1, 1, 2, 3))
    torch.testing.assert_close(unnormalised[0, 4, 0], torch.tensor([1.0, 2.0, 3.0]).sin())  # raw 1-based x


# ----------------------------------------------------------------- decoder
def test_decoder_initialisation():
    torch.manual_seed(0)
    decoder = MSDeformAttnPixelDecoder(CONVNEXT_L_CHANNELS, STRIDES)
    for proj in decoder.input_proj:
        assert not proj[0].bias.any()
        bound = math.sqrt(6.0 / (proj[0].in_channels + proj[0].out_channels))  # xavier-uniform
        assert proj[0].weight.abs().max() <= bound
    for conv in (decoder.adapter_1, decoder.layer_1, decoder.mask_features):
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= math.sqrt(3.0 / fan_in)  # kaiming-uniform, a=1
        assert conv.weight.abs().max() > 0.9 * math.sqrt(3.0 / fan_in)
    assert decoder.adapter_1.bias is None and decoder.layer_1.bias is None and not decoder.mask_features.bias.any()
    layer = decoder.transformer.encoder.layers[0]
    assert not layer.self_attn.attention_weights.weight.any()
    bound = math.sqrt(6.0 / (256 + 1024))
    assert layer.linear1.weight.abs().max() <= bound  # xavier-uniform from the encoder's reset
    assert decoder.transformer.level_embed.std() > 0.5  # normal_
    # encoder layers are independent copies
    assert layer.linear1.weight.data_ptr() != decoder.transformer.encoder.layers[1].linear1.weight.data_ptr()


def _tiny_decoder(seed: int = 0) -> MSDeformAttnPixelDecoder:
    torch.manual_seed(seed)
    return MSDeformAttnPixelDecoder(
        {"res2": 16, "res3": 24, "res4": 40, "res5": 48},
        STRIDES,
        conv_dim=64,
        mask_dim=64,
        enc_layers=1,
        nheads=4,
        dim_feedforward=128,
    )


def _tiny_features(batch: int = 2, height: int = 64, width: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    channels = {"res2": 16, "res3": 24, "res4": 40, "res5": 48}
    return {
        k: torch.randn(batch, c, height // STRIDES[k], width // STRIDES[k], generator=gen) for k, c in channels.items()
    }


def test_decoder_output_shapes_and_gradients():
    decoder = _tiny_decoder()
    features = _tiny_features()
    features["clip_vis_dense"] = torch.randn(2, 48, 2, 4)  # extra entries are ignored
    mask_features, coarsest, multi_scale = decoder.forward_features(features)
    assert mask_features.shape == (2, 64, 16, 32)
    assert coarsest.shape == (2, 64, 2, 4)
    assert [tuple(f.shape) for f in multi_scale] == [(2, 64, 2, 4), (2, 64, 4, 8), (2, 64, 8, 16)]
    assert coarsest is multi_scale[0]
    assert all(t.dtype == torch.float32 for t in [mask_features, *multi_scale])
    loss = mask_features.square().mean() + sum(f.mean() for f in multi_scale)
    loss.backward()
    encoder_attn = decoder.transformer.encoder.layers[0].self_attn
    for param in (
        encoder_attn.sampling_offsets.weight,
        encoder_attn.value_proj.weight,
        decoder.input_proj[0][0].weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    # each image is processed independently
    single = decoder.forward_features({k: v[1:] for k, v in features.items()})
    torch.testing.assert_close(single[0], mask_features[1:].detach(), rtol=1e-4, atol=1e-5)


def test_decoder_float32_under_bfloat16_autocast():
    decoder = _tiny_decoder(seed=1).eval()
    features = _tiny_features(seed=1)
    with torch.no_grad():
        reference = decoder.forward_features(features)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            autocast = decoder.forward_features(features)
            from_bf16 = decoder.forward_features({k: v.bfloat16() for k, v in features.items()})
    for ref, got, half in zip(
        [reference[0], *reference[2]], [autocast[0], *autocast[2]], [from_bf16[0], *from_bf16[2]]
    ):
        assert got.dtype == torch.float32 and half.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=0, atol=0)  # autocast is off inside
        torch.testing.assert_close(half, ref, rtol=0.1, atol=0.1)  # only the inputs were rounded
