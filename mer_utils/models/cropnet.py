"""CropNet, the paper's classifier (section 3.2, Figure 3, equation 8).

CGPO splits the image into ten images z0..z9; one ReXNet feature extractor (timm
``rexnet_100``, shared) runs on all of them as a single batch of ``B * 10``; a shared head
(Conv -> BN -> SiLU -> adaptive average pool -> FC) turns each into a vector z_i; trainable
position embeddings are added to the nine tiles (eq. 8, ``z_i = z_i + p_i``, 0 < i < 10;
the operator was lost in the text and p_i has z_i's size, so we add); z0..z9 are
concatenated and one FC gives the class logits.

The SiLU after the head's BN is ours: the figure lists Conv, BN, pooling and FC, and
without a non-linearity those would collapse into one linear map; ReXNet's own Conv-BN
blocks end with SiLU too.

Defaults (head_channels 1536, embed_dim 1280) put the model at 7.53 M parameters with
five classes, against the paper's "approximately 7.6 M" (the backbone's features are 3.52 M).
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch import nn

from mer_utils.errors import ConfigError
from mer_utils.models.cgpo import CGPO
from mer_utils.models.small_maps import use_small_map_kernels

IMAGENET = "imagenet"  # ``pretrained_weights`` value: timm's own ImageNet weights of the backbone
PAPER_PARAMETERS = 7.6e6  # section 3.2.1: "approximately 7.6M"


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def create_backbone(name: str, imagenet: bool = False) -> nn.Module:
    """A timm model without classifier and pooling: ``forward`` gives the feature map (N, C, h, w).

    ``imagenet``: start from timm's ImageNet weights through timm's own pretrained loading
    (downloaded once into the Hugging Face cache, then read from it; paper 3.2.1 starts from
    ImageNet). When the Hub cannot be reached (:func:`hub_unreachable`, a few seconds) the
    weights are read from that cache alone instead of retrying the download for a minute;
    when they cannot be had, ConfigError says so in one line and names the two ways out.
    """
    import timm  # here, not at the top: a process that only configures runs (a notebook whose
    # folds train in Dask workers, the CLI) does not pay timm's import of every model (~3.5 s)

    unreachable = hub_unreachable() if imagenet else None
    try:
        # drop_rate 0: timm's classifier head would otherwise apply its dropout (0.2 for
        # ReXNet) to the feature map CropNet's head normalises, which is in no equation of the
        # paper and makes that BatchNorm see other statistics in training than in testing
        with _hub_cache_only(unreachable is not None):
            return timm.create_model(name, pretrained=imagenet, num_classes=0, global_pool="", drop_rate=0.0)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        if "Unknown model" in str(err) or not imagenet:
            raise ConfigError(f"unknown backbone {name!r}: {err}") from None
        raise _imagenet_error(name, unreachable or err) from None
    except Exception as err:  # offline: huggingface_hub / requests / OSError in many types
        if not imagenet:
            raise
        raise _imagenet_error(name, unreachable or err) from None


def check_imagenet_weights(name: str) -> None:
    """ConfigError in one line when timm's ImageNet weights of backbone ``name`` can be had
    neither from the Hub nor from its cache (:func:`create_backbone`'s message, naming the two
    ways out). Downloads them once when online, as a fold would. The runner and ``mer
    reproduce`` ask this before any preprocessing or fold, so an offline run stops at once
    rather than failing in every fold. Asked once per process and backbone."""
    if name not in _IMAGENET_CHECKED:
        create_backbone(name, imagenet=True)
        _IMAGENET_CHECKED.add(name)


_IMAGENET_CHECKED: set[str] = set()


def check_backbone(name: str) -> str:
    """``name`` when timm knows the model; else ConfigError naming it and timm's closest names
    (checked when a configuration resolves, before an experiment folder is claimed)."""
    import difflib

    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models() lists them"
        raise ConfigError(f"unknown backbone {name!r}: not a timm model{hint}")
    return name


HUB_PROBE_SECONDS = 5.0  # how long the Hub's host gets to accept a connection


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """None when the Hugging Face Hub's host accepts a connection (or the Hub's own offline
    mode is on, or a proxy is set, which a direct connection cannot test); else the reason,
    e.g. "huggingface.co cannot be reached ([Errno -2] Name or service not known)"."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if getattr(constants, "HF_HUB_OFFLINE", False) or any(
            os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY",
                                        "http_proxy")):
        return None
    url = urlparse(getattr(constants, "ENDPOINT", None) or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    try:
        socket.create_connection((host, url.port or (80 if url.scheme == "http" else 443)), timeout=timeout).close()
    except OSError as err:
        return f"{host} cannot be reached ({err})"
    return None


@contextlib.contextmanager
def _hub_cache_only(on: bool):
    """With ``on``: the Hugging Face Hub's offline mode for the block (a copy in its cache is
    read, nothing is downloaded or retried), as HF_HUB_OFFLINE=1 would set it."""
    from huggingface_hub import constants

    saved = getattr(constants, "HF_HUB_OFFLINE", False)
    constants.HF_HUB_OFFLINE = saved or on
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _imagenet_error(name: str, reason: BaseException | str) -> ConfigError:
    if isinstance(reason, BaseException):
        text = " ".join(str(reason).split()) or "no message"
        reason = f"{type(reason).__name__}: {text if len(text) <= 200 else text[:200].rsplit(' ', 1)[0] + ' ...'}"
    return ConfigError(
        f"cannot load timm's ImageNet weights for {name} (offline, or the download failed: {reason}); "
        "pass a local weights file as pretrained_weights (--pretrained-weights PATH), or 'none' to train from scratch")


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a timm state dict (e.g. ImageNet ``rexnet_100``) from a local file into ``backbone``.

    The classifier's keys (``head.fc.*`` for ReXNet) are ignored. Raises ConfigError when the
    file is missing or unreadable, or when its keys or shapes do not fit the backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pretrained weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors come in many types
        raise ConfigError(f"cannot read pretrained weights {path}: {err}") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints often nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier", "head.fc")
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        problems += [f"shape {s}" for s in wrong_shape[:3]]
        raise ConfigError(
            f"{path} does not fit the backbone: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong_shape)} wrong-shape keys, e.g. " + "; ".join(problems)
        )
    backbone.load_state_dict(state)


class CropNet(nn.Module):
    """CropNet: CGPO + shared ReXNet features + per-image head + position embedding + FC.

    Args:
        num_classes: output classes (5 for CASME II, 3 for MEGC2019).
        backbone: timm model name of the shared feature extractor (the paper's ReXNet).
        cgpo: True for the paper's model; False for the Table 4 ablation "without CGPO":
            the same backbone and head on the single full ``image_size`` image (not down-sampled),
            the classifier on that one vector, no position embedding.
        image_size: side of the square input (320 in the paper).
        grid, alpha: CGPO's tiles per side and overlap factor (3 and 0.3).
        head_channels: output channels of the head's Conv.
        embed_dim: size of each z_i and p_i.
        pos_embed_var: variance of the normal initialisation of p1..p9 (0.2, section 3.2.4).
        dropout: dropout on the concatenated vector before the final FC (ours; ReXNet uses 0.2).
        zero_init_classifier: start the final FC at zero weights and bias (ours; the paper gives
            no initialisation), so every class starts at the same logit and the first loss is
            ln(num_classes) rather than a random guess's confident mistakes.
        pretrained_weights: "imagenet" (timm's ImageNet weights, as the paper starts), a local
            file with backbone weights (a timm state dict), or None to train from scratch.
            ``self.pretrained`` records whether the backbone started from weights.
    """

    def __init__(
        self,
        num_classes: int = 5,
        backbone: str = "rexnet_100",
        cgpo: bool = True,
        image_size: int = 320,
        grid: int = 3,
        alpha: float = 0.3,
        head_channels: int = 1536,
        embed_dim: int = 1280,
        pos_embed_var: float = 0.2,
        dropout: float = 0.2,
        zero_init_classifier: bool = True,
        pretrained_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"CropNet: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.cgpo = CGPO(image_size=image_size, grid=grid, alpha=alpha) if cgpo else None
        self.image_size = image_size
        self.num_images = self.cgpo.num_images if cgpo else 1
        self.channels_last = False  # set by the trainer: the backbone batch is converted
        imagenet = str(pretrained_weights).lower() == IMAGENET
        self.backbone = create_backbone(backbone, imagenet=imagenet)
        self.pretrained = pretrained_weights is not None
        if pretrained_weights is not None and not imagenet:
            load_backbone_weights(self.backbone, pretrained_weights)
        self.head = nn.Sequential(
            nn.Conv2d(self.backbone.num_features, head_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.SiLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(head_channels, embed_dim),
        )
        if cgpo:  # p1..p9 (no p0), N(0, variance pos_embed_var)
            tiles = self.num_images - 1
            self.pos_embed = nn.Parameter(torch.randn(tiles, embed_dim) * math.sqrt(pos_embed_var))
        else:
            self.register_parameter("pos_embed", None)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_images * embed_dim, num_classes))
        if zero_init_classifier:
            nn.init.zeros_(self.classifier[1].weight)
            nn.init.zeros_(self.classifier[1].bias)
        # the same convolutions, computed as tensor products on the CPU where the feature map
        # is at most 2 x 2 (oneDNN is slow there); outputs and gradients are unchanged
        use_small_map_kernels(self)

    def fc_parameters(self) -> list[nn.Parameter]:
        """The parameters of the layers no BatchNorm follows: the head's FC (to z_i), the
        position embeddings p_i and the final FC. Nearly every other weight of CropNet (ReXNet's
        convolutions, the head's Conv) feeds a BatchNorm, which makes its output blind to the
        weight's scale; these do not, and the final FC sums 10 x embed_dim inputs, so an Adam
        step of the same size moves its logits far more (``TrainConfig.fc_lr`` gives them their
        own learning rate)."""
        params = [*self.head[-1].parameters(), *self.classifier.parameters()]
        return params + ([self.pos_embed] if self.pos_embed is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) for normalised images ``x`` (B, 3, S, S)."""
        return self.forward_views(self.views(x))

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's input images (B, num_images, 3, s, s): CGPO's z0..z9, or the one image."""
        if self.cgpo is not None:
            return self.cgpo(x)  # (B, 10, 3, s, s)
        S = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, S, S):
            raise ConfigError(f"CropNet(image_size={S}) expects input (B, 3, {S}, {S}), got {tuple(x.shape)}")
        return x[:, None]

    def forward_views(self, views: torch.Tensor) -> torch.Tensor:
        """Class logits from ``views(x)`` (so a caller can change one view, e.g. blank a tile)."""
        batch = views.shape[0]
        images = views.reshape(batch * self.num_images, *views.shape[2:])
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        z = self.head(self.backbone(images))  # one backbone pass over all B * 10 images
        z = z.reshape(batch, self.num_images, -1)
        if self.pos_embed is not None:  # eq. 8: z_i = z_i + p_i for i = 1..9
            z = torch.cat([z[:, :1], z[:, 1:] + self.pos_embed.to(z.dtype)], dim=1)
        return self.classifier(z.flatten(1))
