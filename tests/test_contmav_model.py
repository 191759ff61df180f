"""Tests of the ContMAV network (vocabseg.openworld.model): output and stage shapes,
parameter counts against the reference notes' analytic count (§1.2), the
NonBottleneck-1D block, learned upsampling, pyramid pooling, He init, ImageNet weight
loading (torchvision and own layouts), the TruFor-style head and both fusions, and the
typed config (booleans parsed strictly)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet34

from vocabseg.errors import InputError
from vocabseg.openworld.model import (
    AdaptivePyramidPooling,
    ContMAV,
    ContMAVConfig,
    LearnedUpsample,
    LearnedWeightFusion,
    NonBottleneck1D,
    NormalizedSumFusion,
    ResNet34Encoder,
    load_encoder_weights,
    normalize_image,
    preset_config,
)

torch.set_num_threads(1)
K = 5  # known classes
H, W = 64, 128


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_model() -> ContMAV:
    torch.manual_seed(0)
    return ContMAV(ContMAVConfig(num_classes=K))


def test_paper_model_shapes_and_contrastive_width_is_k(paper_model):
    x = torch.randn(2, 3, H, W)
    stages = paper_model.encoder(x)
    assert [tuple(s.shape) for s in stages] == [
        (2, 64, H // 4, W // 4), (2, 128, H // 8, W // 8), (2, 256, H // 16, W // 16), (2, 512, H // 32, W // 32)
    ]
    out = paper_model(x)
    assert set(out) == {"semantic", "contrastive"}
    assert out["semantic"].shape == (2, K, H, W)
    assert out["contrastive"].shape == (2, K, H, W)  # not 19
    assert paper_model.decoder_contrastive.head.out_channels == K
    assert paper_model.decoder_contrastive.upsample2.conv.out_channels == K


def test_paper_model_parameter_counts_match_reference(paper_model):
    # reference notes §1.2 (analytic): encoder 14.79 M, skips 0.17 M, APPM 0.79 M, each decoder
    # 16.29 M including 17 k of unused side outputs (for 19 classes), which are not built here
    assert _count(paper_model.encoder) == pytest.approx(14.79e6, abs=0.005e6)
    assert _count(paper_model.skips) == pytest.approx(0.17e6, abs=0.005e6)
    assert _count(paper_model.context) == pytest.approx(0.79e6, abs=0.005e6)
    side_outputs_19 = (512 + 256 + 128) * 19 + 3 * 19
    decoder_19 = ContMAV(ContMAVConfig(num_classes=19, he_init=False)).decoder_semantic
    assert _count(decoder_19) + side_outputs_19 == pytest.approx(16.29e6, abs=0.005e6)


def test_odd_input_size_gives_full_resolution_output():
    model = ContMAV(preset_config("tiny", num_classes=3)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 100))
    assert out["semantic"].shape == (1, 3, 70, 100) and out["contrastive"].shape == (1, 3, 70, 100)


def test_nonbottleneck1d_layout_and_forward():
    torch.manual_seed(1)
    down = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 1, stride=2, bias=False), torch.nn.BatchNorm2d(6))
    block = NonBottleneck1D(4, 6, stride=2, downsample=down).eval()
    assert block.conv3x1_1.kernel_size == (3, 1) and block.conv3x1_1.stride == (2, 1)
    assert block.conv1x3_1.kernel_size == (1, 3) and block.conv1x3_1.stride == (1, 2)
    assert block.bn1.eps == 1e-3 and block.bn2.eps == 1e-3
    x = torch.randn(2, 4, 8, 10)
    y = block(x)
    assert y.shape == (2, 6, 4, 5)
    a = F.relu(block.conv3x1_1(x))
    a = F.relu(block.bn1(block.conv1x3_1(a)))
    a = F.relu(block.conv3x1_2(a))
    a = block.bn2(block.conv1x3_2(a))
    assert torch.allclose(y, F.relu(a + down(x)), atol=1e-6)


def test_learned_upsample_initial_kernel_by_hand():
    up = LearnedUpsample(1)
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    y = up(x)[0, 0]
    # nearest x2 puts ones in the top-left 2x2; kernel [[1,2,1],[2,4,2],[1,2,1]]/16, zero padding
    assert y.shape == (4, 4)
    assert y[0, 0].item() == pytest.approx(9 / 16)  # 4 + 2 + 2 + 1
    assert y[1, 1].item() == pytest.approx(9 / 16)  # 1 + 2 + 2 + 4
    assert y[0, 2].item() == pytest.approx(3 / 16)  # 2 + 1
    assert y[2, 2].item() == pytest.approx(1 / 16)
    assert y[3, 3].item() == 0.0


def test_pyramid_pooling_grid_scale_and_shape():
    ppm = AdaptivePyramidPooling(8, 8, bins=(1, 2, 4, 8), branch_channels=2, input_size=(2, 4))
    assert ppm.grid_scale((2, 4)) == (1, 1)
    assert ppm.grid_scale((4, 8)) == (2, 2)  # twice the training resolution
    assert ppm.fuse[0].in_channels == 8 + 4 * 2
    ppm.eval()
    x = torch.randn(1, 8, 4, 8)
    assert ppm(x).shape == (1, 8, 4, 8)
    # a constant map pools to itself: every branch sees the same constant
    const = torch.ones(1, 8, 4, 8)
    out = ppm(const)
    assert torch.allclose(out, out[..., :1, :1].expand_as(out))


def test_he_init_skips_upsamplers_and_heads(paper_model):
    w = paper_model.encoder.layer4[1].conv3x1_2.weight
    assert w.std().item() == pytest.approx((2.0 / (512 * 3)) ** 0.5, rel=0.02)  # fan_out = 512 * 3 * 1
    up = paper_model.decoder_semantic.layers[0].upsample.conv.weight
    assert torch.allclose(up[0, 0], torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)
    head = paper_model.decoder_semantic.head.weight  # PyTorch default: uniform(+-1/sqrt(fan_in))
    bound = 1.0 / (128 * 9) ** 0.5
    assert head.abs().max().item() <= bound + 1e-7 and head.abs().max().item() > 0.9 * bound


def test_torchvision_weights_into_nbt1d_encoder(tmp_path):
    torch.manual_seed(2)
    tv = resnet34(weights=None)
    path = tmp_path / "resnet34.pth"
    torch.save(tv.state_dict(), path)
    enc = ResNet34Encoder("nbt1d")
    bn_before = enc.layer1[0].bn1.weight.clone()
    report = load_encoder_weights(enc, path)
    assert report.layout == "torchvision"
    assert torch.equal(enc.conv1.weight, tv.conv1.weight)
    assert torch.equal(enc.bn1.running_var, tv.bn1.running_var)
    assert torch.equal(enc.layer3[0].downsample[0].weight, tv.layer3[0].downsample[0].weight)
    assert torch.equal(enc.layer1[0].bn1.weight, bn_before)  # block BN not mapped
    assert "layer1.0.bn1.weight" in report.kept and "layer1.0.conv3x1_1.weight" in report.kept
    assert {"fc.weight", "layer1.0.conv1.weight", "layer1.0.bn1.weight"} <= set(report.unused)
    loaded = set(report.loaded)
    assert loaded == {k for k in enc.state_dict() if k.split(".")[0] in ("conv1", "bn1") or ".downsample." in k}


def test_torchvision_weights_into_basic_encoder_reproduce_torchvision(tmp_path):
    torch.manual_seed(3)
    tv = resnet34(weights=None).eval()
    path = tmp_path / "resnet34.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    enc = ResNet34Encoder("basic").eval()
    report = load_encoder_weights(enc, path)
    assert report.kept == [] and set(report.unused) == {"fc.weight", "fc.bias"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        assert torch.allclose(enc(x)[3], ref, atol=1e-5)


def test_own_layout_weights_and_errors(tmp_path):
    src = ResNet34Encoder("nbt1d", layers=(1, 1, 1, 1), width=8)
    path = tmp_path / "r34_NBt1D.pth"
    torch.save({f"encoder.{k}": v for k, v in src.state_dict().items()}, path)
    dst = ResNet34Encoder("nbt1d", layers=(1, 1, 1, 1), width=8)
    report = load_encoder_weights(dst, path)
    assert report.layout == "own" and report.kept == [] and report.unused == []
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(InputError, match="missing.pth: encoder weights not found"):
        load_encoder_weights(dst, tmp_path / "missing.pth")
    with pytest.raises(InputError, match="mis-shaped"):
        load_encoder_weights(ResNet34Encoder("nbt1d", layers=(1, 1, 1, 1), width=16), path)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="other.pth: no key"):
        load_encoder_weights(dst, tmp_path / "other.pth")


def test_model_loads_pretrained_path_after_he_init(tmp_path):
    src = ResNet34Encoder("nbt1d", layers=(1, 1, 1, 1), width=16)
    path = tmp_path / "enc.pth"
    torch.save(src.state_dict(), path)
    model = ContMAV(preset_config("tiny", num_classes=K, pretrained=str(path)))
    assert model.encoder_load_report.kept == []
    assert torch.equal(model.encoder.layer2[0].conv3x1_1.weight, src.layer2[0].conv3x1_1.weight)


@pytest.mark.parametrize("fusion", ["normalized_sum", "learned"])
def test_trufor_head_and_fusion(fusion):
    torch.manual_seed(4)
    model = ContMAV(preset_config("tiny", num_classes=K, trufor=True, trufor_fusion=fusion))
    out = model(torch.randn(2, 3, H, W))
    assert set(out) == {"semantic", "contrastive", "contrastive_decoder", "trufor"}
    assert all(v.shape == (2, K, H, W) for v in out.values())
    c, t = out["contrastive_decoder"], out["trufor"]
    if fusion == "normalized_sum":
        expected = c / c.norm(dim=1, keepdim=True) + t / t.norm(dim=1, keepdim=True)
        assert out["contrastive"].norm(dim=1).max() <= 2.0 + 1e-5
    else:
        expected = 0.5 * c + 0.5 * t  # gate starts at sigmoid(0)
    assert torch.allclose(out["contrastive"], expected, atol=1e-5)
    out["contrastive"].square().sum().backward()
    assert model.trufor_head.proj[3].weight.grad.abs().sum() > 0
    assert model.decoder_contrastive.head.weight.grad.abs().sum() > 0


def test_fusion_modules_by_hand():
    c = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    t = torch.tensor([0.0, -2.0]).view(1, 2, 1, 1)
    assert torch.allclose(NormalizedSumFusion()(c, t).flatten(), torch.tensor([0.6, -0.2]))
    fuse = LearnedWeightFusion(2)
    with torch.no_grad():
        fuse.weight.copy_(torch.tensor([0.0, 100.0]))
    assert torch.allclose(fuse(c, t).flatten(), torch.tensor([1.5, 4.0]))


def test_config_parses_booleans_strictly_and_rejects_bad_keys():
    cfg = ContMAVConfig.from_dict({"num_classes": "16", "trufor": "False", "he_init": "yes"})
    assert (cfg.num_classes, cfg.trufor, cfg.he_init) == (16, False, True)
    assert ContMAV(preset_config("tiny", num_classes=2, trufor="false")).trufor_head is None
    with pytest.raises(InputError, match="study.yaml: trufor: expected a boolean"):
        ContMAVConfig.from_dict({"trufor": "Flase"}, source="study.yaml")
    with pytest.raises(InputError, match="unknown key"):
        ContMAVConfig.from_dict({"num_class": 3})
    with pytest.raises(InputError, match="trufor_fusion"):
        ContMAVConfig.from_dict({"trufor_fusion": "sum"})
    with pytest.raises(InputError, match="num_classes"):
        ContMAVConfig.from_dict({"num_classes": True})
    assert ContMAVConfig.from_dict(cfg.to_dict()) == cfg


def test_normalize_image():
    img = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) + torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(normalize_image(img), torch.ones(1, 3, 1, 1))
