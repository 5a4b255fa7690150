"""CGPO geometry and CropNet structure (paper section 3.2)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import timm
import torch

from mer_utils.errors import ConfigError
from mer_utils.models import CGPO, PAPER_PARAMETERS, CropNet, count_parameters


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Two torch threads on these small tensors crawl when the 2-core machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quadrant_image(size: int) -> torch.Tensor:
    """(1, 3, size, size): top-left 10, top-right 20, bottom-left 30, bottom-right 40."""
    image = torch.empty(1, 3, size, size)
    half = size // 2
    image[..., :half, :half] = 10
    image[..., :half, half:] = 20
    image[..., half:, :half] = 30
    image[..., half:, half:] = 40
    return image


def test_cgpo_paper_geometry_at_320():
    cgpo = CGPO()
    out = cgpo(torch.rand(2, 3, 320, 320))
    assert out.shape == (2, 10, 3, 160, 160)
    assert cgpo.tile_side == 134
    assert all(x1 - x0 == 134 and y1 - y0 == 134 for x0, y0, x1, y1 in cgpo.boxes)
    starts = sorted({x0 for x0, _, _, _ in cgpo.boxes})
    assert starts == [0, 93, 186]


@pytest.mark.parametrize("size, side, out_side", [(320, 134, 160), (64, 27, 32)])
def test_tiles_cover_image_and_overlap_by_alpha(size, side, out_side):
    cgpo = CGPO(image_size=size)
    assert cgpo.tile_side == side and cgpo.output_size == out_side
    assert cgpo(torch.rand(1, 3, size, size)).shape == (1, 10, 3, out_side, out_side)
    covered = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in cgpo.boxes:
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    for row in range(3):
        for col in range(2):
            left, right = cgpo.boxes[3 * row + col], cgpo.boxes[3 * row + col + 1]
            assert abs((left[2] - right[0]) - 0.3 * side) <= 1.0  # horizontal neighbours
            above, below = cgpo.boxes[3 * col + row], cgpo.boxes[3 * (col + 1) + row]
            assert abs((above[3] - below[1]) - 0.3 * side) <= 1.0  # vertical neighbours


def test_tiles_are_row_major():
    out = CGPO(image_size=320)(quadrant_image(320))[0]
    means = out.mean(dim=(1, 2, 3))
    # corner tiles (134 px) lie inside one 160 px quadrant each
    assert means[1].item() == pytest.approx(10)  # top-left
    assert means[3].item() == pytest.approx(20)  # top-right
    assert means[7].item() == pytest.approx(30)  # bottom-left
    assert means[9].item() == pytest.approx(40)  # bottom-right
    assert means[2] < means[8] and means[4] < means[6]  # top < bottom, left < right
    assert means[5].item() == pytest.approx(25, abs=0.5)  # centre tile straddles all four


def test_level0_is_one_gaussian_pyramid_step():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (64, 64, 3)).astype(np.float32)
    z0 = CGPO(image_size=64)(torch.from_numpy(image).permute(2, 0, 1)[None])[0, 0]
    expected = cv2.pyrDown(image)  # 1-4-6-4-1 kernel, reflect-101 borders
    np.testing.assert_allclose(z0.permute(1, 2, 0).numpy(), expected, atol=1e-3)


def test_cgpo_rejects_bad_configuration_and_input():
    with pytest.raises(ConfigError, match="even"):
        CGPO(image_size=321)
    with pytest.raises(ConfigError, match="alpha"):
        CGPO(alpha=1.0)
    with pytest.raises(ConfigError, match="tile_size"):
        CGPO(level0_size=160, tile_size=128)
    with pytest.raises(ConfigError, match=r"\(B, 3, 320, 320\)"):
        CGPO()(torch.rand(1, 3, 160, 160))


def test_default_model_matches_paper_size_and_position_embedding_init():
    torch.manual_seed(0)
    model = CropNet(num_classes=5)
    total = count_parameters(model)
    assert abs(total - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.03  # about 7.6 M
    assert not model.pretrained
    embed = model.pos_embed.detach()
    assert embed.shape == (9, 1280)  # p1..p9, no p0
    # 11520 draws: standard errors are 0.004 (mean) and 0.003 (variance)
    assert abs(embed.mean().item()) < 0.02
    assert embed.var().item() == pytest.approx(0.2, abs=0.02)
    assert model.pos_embed.requires_grad
    # the one dropout is CropNet's own before the final FC: none inside the backbone, whose
    # feature map the head's BatchNorm normalises (timm's ReXNet would drop 0.2 of it)
    rates = {name: module.p for name, module in model.named_modules() if isinstance(module, torch.nn.Dropout)}
    assert {name for name, rate in rates.items() if rate > 0} == {"classifier.0"}
    model.train()
    features = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.backbone(features), model.backbone(features))  # nothing random in training mode


@pytest.mark.parametrize("cgpo, backbone_batch, backbone_side", [(True, 30, 32), (False, 3, 64)])
def test_backbone_runs_once_per_forward(cgpo, backbone_batch, backbone_side):
    model = CropNet(num_classes=4, cgpo=cgpo, image_size=64).eval()
    calls = []
    model.backbone.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape)))
    with torch.no_grad():
        logits = model(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 4)
    assert calls == [(backbone_batch, 3, backbone_side, backbone_side)]


def test_position_embedding_is_added_to_tiles_only():
    model = CropNet(num_classes=3, image_size=64, dropout=0.0).eval()
    captured = []
    model.classifier.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
        plain = model.head(model.backbone(model.cgpo(x).reshape(20, 3, 32, 32))).reshape(2, 10, -1)
    fused = captured[0].reshape(2, 10, -1)
    torch.testing.assert_close(fused[:, 0], plain[:, 0])
    torch.testing.assert_close(fused[:, 1:], plain[:, 1:] + model.pos_embed)


def test_pretrained_weights_load_from_a_timm_state_dict(tmp_path):
    source = timm.create_model("rexnet_100", pretrained=False)  # with its ImageNet classifier
    path = tmp_path / "rexnet_100.pth"
    torch.save(source.state_dict(), path)
    model = CropNet(num_classes=3, image_size=64, pretrained_weights=path)
    assert model.pretrained
    torch.testing.assert_close(model.backbone.stem.conv.weight, source.stem.conv.weight)
    torch.testing.assert_close(model.backbone.features[-1].bn.running_var, source.features[-1].bn.running_var)


def test_pretrained_weights_errors(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ConfigError, match="nowhere.pth"):
        CropNet(num_classes=3, image_size=64, pretrained_weights=missing)
    state = timm.create_model("rexnet_100", pretrained=False, num_classes=0).state_dict()
    state["stem.conv.weight"] = torch.zeros(8, 3, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    del state["stem.bn.weight"]
    unfit = tmp_path / "unfit.pth"
    torch.save(state, unfit)
    with pytest.raises(ConfigError, match=r"unfit.pth.*missing stem.bn.weight.*unexpected extra.weight.*stem.conv.weight"):
        CropNet(num_classes=3, image_size=64, pretrained_weights=unfit)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="garbage.pth"):
        CropNet(num_classes=3, image_size=64, pretrained_weights=garbage)


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="no_such_net"):
        CropNet(num_classes=3, backbone="no_such_net")


def test_imagenet_weights_offline_is_one_clear_error(offline_hub):
    """timm's own pretrained loading; offline without a cached copy the error says so in one
    line and names the two ways out. No test needs the network."""
    with pytest.raises(ConfigError) as caught:
        CropNet(num_classes=5, image_size=64, pretrained_weights="imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert "ImageNet weights for rexnet_100" in message
    assert "local weights file" in message and "'none' to train from scratch" in message


def test_an_unreachable_hub_fails_at_once_and_reads_only_the_cache(monkeypatch):
    """Offline, the Hub's host refuses the connection: timm's loading then runs in the Hub's
    offline mode (a cached copy would load; nothing is retried for a minute) and the one-line
    error gives that reason, whole. No test needs the network: the connection is faked."""
    import socket

    from huggingface_hub import constants

    from mer_utils.models import cropnet

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def refuse(address, timeout=None):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert cropnet.hub_unreachable() == "huggingface.co cannot be reached ([Errno -2] Name or service not known)"
    seen = []

    def create_model(*args, **kwargs):
        seen.append((kwargs.get("pretrained"), constants.HF_HUB_OFFLINE))
        raise FileNotFoundError("no copy in the cache")

    import timm

    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(ConfigError) as caught:
        cropnet.create_backbone("rexnet_100", imagenet=True)
    assert seen == [(True, True)] and constants.HF_HUB_OFFLINE is False  # offline for that call only
    message = str(caught.value)
    assert "\n" not in message and "huggingface.co cannot be reached ([Errno -2] Name or service not known)" in message
    assert "local weights file" in message and "'none' to train from scratch" in message
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # a direct connection cannot test a proxy
    assert cropnet.hub_unreachable() is None


def test_a_cached_imagenet_copy_loads_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    """Offline with a copy of timm's ImageNet weights in the Hugging Face cache (as one online
    run leaves it): the backbone starts from that copy, read from the cache alone. The copy is
    made here (random weights under timm's file name for rexnet_100); no test needs the network."""
    import socket

    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from mer_utils.models import cropnet

    torch.manual_seed(1)
    source = timm.create_model("rexnet_100")  # with timm's 1000-class head, as the Hub's file holds it
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    repo = tmp_path / "hub" / "models--timm--rexnet_100.nav_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)

    def refuse(address, timeout=None):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    model = cropnet.CropNet(num_classes=5, image_size=64, pretrained_weights="imagenet")
    loaded = model.backbone.state_dict()
    assert model.pretrained and constants.HF_HUB_OFFLINE is False
    assert set(loaded) == {k for k in state if not k.startswith("head.fc.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_a_long_download_error_is_cut_at_a_word():
    from mer_utils.models.cropnet import _imagenet_error

    message = str(_imagenet_error("rexnet_100", OSError("word " * 100)))
    assert "\n" not in message and "word word ...)" in message and "wor ..." not in message


def test_pretrained_weights_values_are_checked_by_the_configuration(tmp_path):
    from mer_utils.config import ExperimentConfig, resolve_weights

    assert resolve_weights(None) is None and resolve_weights("none") is None and resolve_weights("") is None
    assert resolve_weights("imagenet") == "imagenet" and resolve_weights("ImageNet") == "imagenet"
    weights = tmp_path / "rexnet.pth"
    weights.write_bytes(b"x")
    assert resolve_weights(str(weights)) == str(weights.resolve())
    with pytest.raises(ConfigError, match=r"'imagenett' is neither 'imagenet', 'none' nor an existing file"):
        ExperimentConfig(root=str(tmp_path), protocol="casme2-5class", pretrained_weights="imagenett").resolved()
    lbptop = ExperimentConfig(root=str(tmp_path), protocol="casme2-5class", method="lbptop",
                              pretrained_weights="imagenet").resolved()
    assert lbptop.pretrained_weights is None  # the SVM baseline has no network


def test_method_lists_agree():
    from mer_utils.config import CROPNET_METHODS
    from mer_utils.preprocess import METHODS

    assert tuple(METHODS) == CROPNET_METHODS


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("side,stride", [(1, 1), (2, 1), (2, 2), (1, 2), (3, 1)])
def test_small_map_depthwise_convolution_equals_conv2d(side, stride, channels_last):
    from mer_utils.models.small_maps import SmallMapDepthwiseConv2d

    torch.manual_seed(side * 10 + stride)
    conv = torch.nn.Conv2d(6, 6, 3, stride, 1, groups=6, bias=True).double()
    x = torch.randn(5, 6, side, side, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    expected = conv(x)
    expected_grads = torch.autograd.grad((expected * torch.arange(expected.numel()).view_as(expected)).sum(),
                                         [x, conv.weight, conv.bias])
    conv.__class__ = SmallMapDepthwiseConv2d
    got = conv(x)
    grads = torch.autograd.grad((got * torch.arange(got.numel()).view_as(got)).sum(), [x, conv.weight, conv.bias])
    assert got.shape == expected.shape
    if channels_last:  # the layout the BatchNorm after it is fast in
        assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("side", [1, 2, 3])
def test_small_map_pointwise_convolution_equals_conv2d(side):
    from mer_utils.models.small_maps import SmallMapPointwiseConv2d

    torch.manual_seed(side)
    conv = torch.nn.Conv2d(7, 4, 1, bias=side != 2).double()
    x = torch.randn(3, 7, side, side, dtype=torch.float64, requires_grad=True)
    params = [p for p in (conv.weight, conv.bias) if p is not None]
    expected = conv(x)
    expected_grads = torch.autograd.grad((expected * torch.arange(expected.numel()).view_as(expected)).sum(),
                                         [x, *params])
    conv.__class__ = SmallMapPointwiseConv2d
    got = conv(x)
    grads = torch.autograd.grad((got * torch.arange(got.numel()).view_as(got)).sum(), [x, *params])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_cropnet_small_map_kernels_change_no_result():
    """CropNet switches ReXNet's depthwise and pointwise convolutions to the small-map CPU
    path; logits and every gradient equal those of the stock nn.Conv2d model (float64)."""
    from mer_utils.models.small_maps import SmallMapDepthwiseConv2d, SmallMapPointwiseConv2d

    torch.manual_seed(0)
    model = CropNet(num_classes=3, image_size=64, head_channels=32, embed_dim=16).double().train()
    kinds = {type(m) for m in model.modules()}
    assert {SmallMapDepthwiseConv2d, SmallMapPointwiseConv2d} <= kinds
    stock = CropNet(num_classes=3, image_size=64, head_channels=32, embed_dim=16).double().train()
    for module in stock.modules():
        if isinstance(module, (SmallMapDepthwiseConv2d, SmallMapPointwiseConv2d)):
            module.__class__ = torch.nn.Conv2d
    stock.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    outputs = []
    for net in (model, stock):
        torch.manual_seed(1)  # the same dropout mask
        logits = net(x)
        logits.square().sum().backward()
        outputs.append((logits, [p.grad for p in net.parameters()]))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=1e-9, atol=1e-9)
    for a, b in zip(outputs[0][1], outputs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_small_map_kernels_train_after_a_prediction_under_inference_mode():
    """The tap index cached by a first call under torch.inference_mode (a prediction) must
    still serve a training pass afterwards (autograd saves it for backward)."""
    from mer_utils.models import small_maps

    small_maps._TAP_INDEX.clear()
    conv = torch.nn.Conv2d(4, 4, 3, 1, 1, groups=4)
    conv.__class__ = small_maps.SmallMapDepthwiseConv2d
    with torch.inference_mode():
        conv(torch.randn(2, 4, 2, 2))
    x = torch.randn(2, 4, 2, 2, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_seed_ensemble_outputs_the_log_of_its_members_mean_probabilities():
    from mer_utils.models.ensemble import SeedEnsemble

    torch.manual_seed(0)
    members = [CropNet(num_classes=3, image_size=64, head_channels=16, embed_dim=8).eval() for _ in range(3)]
    ensemble = SeedEnsemble(members).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(0)
        got = ensemble(x)
        views = ensemble.views(x)
        torch.testing.assert_close(torch.softmax(got, dim=1), expected)
        torch.testing.assert_close(got.exp().sum(1), torch.ones(2))  # already normalised
        torch.testing.assert_close(ensemble.forward_views(views), got)  # tile blanking goes through views
    assert (ensemble.num_classes, ensemble.image_size, ensemble.pretrained) == (3, 64, False)
    with pytest.raises(ConfigError, match="two or more members"):
        SeedEnsemble(members[:1])
    with pytest.raises(ConfigError, match="members differ"):
        SeedEnsemble([members[0], CropNet(num_classes=4, image_size=64, head_channels=16, embed_dim=8)])


def test_configuring_a_run_does_not_import_timm(tmp_path):
    """timm imports every model it registers (~3.5 s here). A process that only configures runs
    (a notebook whose folds train in Dask workers, the CLI's parent) does not need it; building
    a model does."""
    import subprocess
    import sys

    program = (
        "import sys\n"
        "from mer_utils.config import ExperimentConfig\n"
        f"config = ExperimentConfig.from_parameters({{'data_root': {str(tmp_path)!r}}}, protocol='casme2-5class').resolved()\n"
        "assert config.backbone == 'rexnet_100'\n"
        "print('timm' in sys.modules)\n"
        "from mer_utils.models import CropNet\n"
        "CropNet(num_classes=5, image_size=64)\n"
        "print('timm' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
