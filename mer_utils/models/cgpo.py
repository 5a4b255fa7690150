"""Cropped Gaussian Pyramid with Overlapping (CGPO), paper section 3.2.2 (Figure 3).

One preprocessed image becomes ten images of the same size, stacked in this fixed order:

- index 0, z0: the whole image after one Gaussian pyramid step (5 x 5 binomial blur, then
  every second pixel), i.e. 320 x 320 -> 160 x 160 (pyramid level 0 of the paper);
- indices 1..9, z1..z9: a ``grid`` x ``grid`` grid of overlapping square tiles of the full
  image, row-major (1 top-left, 2 top-middle, 3 top-right, 4 middle-left, ..., 9
  bottom-right), each resized (bilinear, antialiased) to the same side as z0.

Tile side ``t = ceil(S / (grid - (grid - 1) * alpha))``: ``grid`` tiles whose neighbours
overlap by ``alpha * t`` span ``grid * t - (grid - 1) * alpha * t = S`` (docs/method.md writes
``3 - 2 * alpha``). At S = 320, alpha = 0.3: t = 134. Tile starts are spread evenly from
0 to ``S - t`` (0, 93, 186), so the tiles cover the image exactly; rounding makes the
overlap ``alpha * t`` within a pixel (41 px against 40.2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mer_utils.errors import ConfigError

# 1-4-6-4-1 binomial filter: the classic Gaussian pyramid kernel (Burt and Adelson, as in cv2.pyrDown).
_BINOMIAL_5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def tile_side(image_size: int, grid: int, alpha: float) -> int:
    """Side of each square tile: ``ceil(S / (grid - (grid - 1) * alpha))`` (134 at 320, 3, 0.3)."""
    return math.ceil(image_size / (grid - (grid - 1) * alpha))


def tile_starts(image_size: int, side: int, grid: int) -> list[int]:
    """Top-left coordinates along one axis: evenly spread, first 0, last ``image_size - side``."""
    if grid == 1:
        return [0]
    span = image_size - side
    return [math.floor(k * span / (grid - 1) + 0.5) for k in range(grid)]


class CGPO(nn.Module):
    """Cropped Gaussian Pyramid with Overlapping: ``(B, 3, S, S) -> (B, 1 + grid**2, 3, s, s)``.

    Args:
        image_size: side S of the (square) input image; the paper's 320. Must be even.
        level0_size: side s of every output image; None gives ``S // 2`` (the paper's 160:
            one pyramid step). Another value resizes the pyramid step's output to it.
        tile_size: side each tile is resized to; None means ``level0_size``. The ten images
            go through the backbone as one batch, so it must equal ``level0_size``.
        grid: tiles per row and column (the paper's 3, giving z1..z9).
        alpha: overlap factor, the fraction of a tile's side shared with its neighbour
            (the paper's 0.3).

    ``boxes`` lists the tiles' ``(x0, y0, x1, y1)`` pixel boxes (x1, y1 exclusive) in the
    output order z1..z9, for drawing them on a face.
    """

    def __init__(
        self,
        image_size: int = 320,
        level0_size: int | None = None,
        tile_size: int | None = None,
        grid: int = 3,
        alpha: float = 0.3,
    ) -> None:
        super().__init__()
        if image_size < 4 or image_size % 2:
            raise ConfigError(f"CGPO: image_size must be an even number >= 4, got {image_size}")
        if grid < 1:
            raise ConfigError(f"CGPO: grid must be >= 1, got {grid}")
        if not 0.0 <= alpha < 1.0:
            raise ConfigError(f"CGPO: alpha must be in [0, 1), got {alpha}")
        level0_size = image_size // 2 if level0_size is None else int(level0_size)
        tile_size = level0_size if tile_size is None else int(tile_size)
        if tile_size != level0_size:
            raise ConfigError(
                f"CGPO: tile_size ({tile_size}) must equal level0_size ({level0_size}): "
                "the ten images are stacked into one backbone batch"
            )
        if level0_size < 1:
            raise ConfigError(f"CGPO: level0_size must be >= 1, got {level0_size}")
        self.image_size = image_size
        self.output_size = level0_size
        self.grid = grid
        self.alpha = alpha
        self.tile_side = tile_side(image_size, grid, alpha)
        starts = tile_starts(image_size, self.tile_side, grid)
        t = self.tile_side
        self.boxes: list[tuple[int, int, int, int]] = [
            (x0, y0, x0 + t, y0 + t) for y0 in starts for x0 in starts  # row-major
        ]
        kernel = torch.outer(_BINOMIAL_5, _BINOMIAL_5).expand(3, 1, 5, 5).contiguous()
        self.register_buffer("gaussian_kernel", kernel, persistent=False)

    @property
    def num_images(self) -> int:
        """Images per sample: z0 plus the grid's tiles (10 in the paper)."""
        return 1 + self.grid * self.grid

    def pyramid_down(self, x: torch.Tensor) -> torch.Tensor:
        """One Gaussian pyramid step: 5 x 5 binomial blur (reflected borders), keep every 2nd pixel."""
        blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.gaussian_kernel.to(x.dtype), groups=3)
        return blurred[..., ::2, ::2]

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.output_size
        if x.shape[-1] == s and x.shape[-2] == s:
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Split ``x`` (B, 3, S, S) into the stacked ten images (B, 10, 3, s, s), order z0, z1..z9."""
        S = self.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != S or x.shape[3] != S:
            raise ConfigError(f"CGPO(image_size={S}) expects input (B, 3, {S}, {S}), got {tuple(x.shape)}")
        batch = x.shape[0]
        level0 = self._resize(self.pyramid_down(x))
        tiles = torch.stack([x[:, :, y0:y1, x0:x1] for x0, y0, x1, y1 in self.boxes], dim=1)
        t = self.tile_side
        tiles = self._resize(tiles.reshape(batch * len(self.boxes), 3, t, t))
        s = self.output_size
        tiles = tiles.reshape(batch, len(self.boxes), 3, s, s)
        return torch.cat([level0.unsqueeze(1), tiles], dim=1)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, output_size={self.output_size}, grid={self.grid}, "
            f"alpha={self.alpha}, tile_side={self.tile_side}"
        )


# ----------------------------------------------------------------------------- views (notebook 02)


def cgpo_views(image, grid: int = 3, alpha: float = 0.3):
    """The ten CGPO images of one square RGB image (paper 3.2.2): returns ``(views, cgpo)``,
    ``views`` a dict z0..z9 -> uint8 image, ``cgpo`` the module (its ``boxes``, ``tile_side``)."""
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise ConfigError(f"cgpo_views expects a square (S, S, 3) image, got shape {image.shape}")
    cgpo = CGPO(image_size=image.shape[0], grid=grid, alpha=alpha)
    batch = torch.from_numpy(image).permute(2, 0, 1).float().unsqueeze(0)
    with torch.no_grad():
        out = cgpo(batch)[0].round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return {f"z{i}": out[i] for i in range(out.shape[0])}, cgpo


def cgpo_geometry(cgpo):
    """The tiling's numbers: image side, tile side t, stride, overlap in pixels (measured
    between neighbours and the nominal alpha * t), output side."""
    import numpy as np
    import pandas as pd

    starts = sorted({x0 for x0, _, _, _ in cgpo.boxes})
    strides = np.diff(starts) if len(starts) > 1 else np.array([0])
    t = cgpo.tile_side
    values = {
        "image side (px)": cgpo.image_size, "grid": f"{cgpo.grid} x {cgpo.grid}", "alpha": cgpo.alpha,
        "tile side t (px)": t, "tile starts (px)": ", ".join(map(str, starts)),
        "stride (px)": ", ".join(map(str, strides.tolist())),
        "overlap between neighbours (px)": ", ".join(str(t - s) for s in strides.tolist()),
        "nominal overlap alpha * t (px)": round(cgpo.alpha * t, 1),
        "output side of every image (px)": cgpo.output_size,
    }
    return pd.DataFrame({"value": [str(v) for v in values.values()]}, index=pd.Index(list(values), name="quantity"))
