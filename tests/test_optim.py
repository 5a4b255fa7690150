"""mer_utils.optim.AdamP computes the update of the authors' ``adamp`` package."""
from __future__ import annotations

import adamp
import pytest
import torch
from torch import nn

from mer_utils.optim import AdamP


def _net() -> nn.Module:
    # conv + BatchNorm weights are scale-invariant (projected), the linear layer is not,
    # biases and BatchNorm parameters are 1-d (never projected); no bias before a BatchNorm:
    # its gradient is rounding noise, which Adam amplifies
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def _train(optimizer_class, steps: int, channels_last: bool = False, **kwargs) -> tuple[nn.Module, list[int]]:
    torch.manual_seed(0)
    net = _net()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = optimizer_class(net.parameters(), **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        images = torch.randn(6, 3, 8, 8, generator=generator)
        labels = torch.randint(0, 4, (6,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    return net, [state["step"] for state in optimizer.state.values()]


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_adamp_matches_the_authors_package(weight_decay, channels_last):
    kwargs = dict(lr=5e-3, weight_decay=weight_decay)
    ours, steps = _train(AdamP, 12, channels_last=channels_last, **kwargs)
    # the package views weights with .view, which a channels-last weight refuses: compare the
    # channels-last run with the package on the same (contiguous) network
    theirs, _ = _train(adamp.AdamP, 12, **kwargs)
    # the same arithmetic in another order rounds differently, and 12 steps of training carry
    # that on (channels-last convolutions round differently again: compared more loosely)
    tolerance = dict(rtol=1e-3, atol=1e-4) if channels_last else dict(rtol=1e-4, atol=1e-5)
    assert steps and set(steps) == {12}
    for (name, mine), (_, reference) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(mine, reference, **tolerance, msg=lambda m: f"{name}: {m}")


def test_adamp_projects_scale_invariant_weights():
    """A weight followed by BatchNorm gets no radial update (its norm grows only by the
    second-order term), unlike plain Adam's; weights and decays move as the package's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    net = nn.Sequential(conv, nn.BatchNorm2d(4, affine=False), nn.Flatten(), nn.Linear(4 * 36, 2))
    optimizer = AdamP(net.parameters(), lr=1e-2)
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,))
    before = conv.weight.detach().clone()
    nn.functional.cross_entropy(net(images), labels).backward()
    optimizer.step()
    moved = conv.weight.detach() - before
    radial = (moved.flatten(1) * before.flatten(1)).sum(1) / before.flatten(1).norm(dim=1)
    assert moved.abs().max() > 1e-4  # it moved ...
    assert radial.abs().max() < 1e-3 * moved.flatten(1).norm(dim=1).min() + 1e-6  # ... tangentially


def test_adamp_keeps_the_packages_state_layout():
    """The direction buffers are scratch: a saved state holds step and the two moments, as the package's."""
    net, _ = _train(AdamP, 2, lr=1e-3)
    optimizer = AdamP(net.parameters(), lr=1e-3)
    nn.functional.cross_entropy(net(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
    optimizer.step()
    saved = optimizer.state_dict()["state"]
    assert saved and all(set(state) == {"step", "exp_avg", "exp_avg_sq"} for state in saved.values())
