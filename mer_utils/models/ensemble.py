"""Several CropNets of one architecture, trained with different seeds, as one classifier.

Not in the paper: the kit's ``ensemble`` setting (``train.TrainConfig``). On the small
synthetic sets one network trained from scratch is a draw whose UF1 moves by about 0.1 with
the training seed. The average of the softmax probabilities of two networks trained with
seeds ``seed, seed + 1`` (each from its own initialisation, shuffling and augmentation)
scored above both of them in eight of nine tuning runs (docs/tuning.md, section 10). With
one member it is not used: a model is a ``CropNet``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mer_utils.errors import ConfigError
from mer_utils.models.cropnet import CropNet


class SeedEnsemble(nn.Module):
    """Members' softmax probabilities averaged: ``p(c | x) = mean_k softmax(f_k(x))_c``.

    ``forward`` returns ``log p`` (B, num_classes), so ``softmax(forward(x)) = p``: callers that
    take the softmax of a model's logits get the ensemble's averaged probabilities unchanged.

    Args:
        members: two or more trained CropNets with the same classes, input size and CGPO.
    """

    def __init__(self, members: Sequence[CropNet]) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ConfigError(f"SeedEnsemble needs two or more members, got {len(members)}")
        first = members[0]
        for member in members[1:]:
            if (member.num_classes, member.image_size, member.num_images) != (
                    first.num_classes, first.image_size, first.num_images):
                raise ConfigError("SeedEnsemble: members differ in classes, input size or CGPO")
        self.members = nn.ModuleList(members)

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    @property
    def image_size(self) -> int:
        return self.members[0].image_size

    @property
    def pretrained(self) -> bool:
        return bool(self.members[0].pretrained)

    @pretrained.setter
    def pretrained(self, value: bool) -> None:
        for member in self.members:
            member.pretrained = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_views(self.views(x))

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """CGPO's z0..z9 (the same for every member: cropping has no weights)."""
        return self.members[0].views(x)

    def forward_views(self, views: torch.Tensor) -> torch.Tensor:
        """log of the members' mean softmax probabilities, from ``views(x)``."""
        log_probs = torch.stack([torch.log_softmax(member.forward_views(views).float(), dim=1)
                                 for member in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))
