"""Training augmentation: Mask2Former's Cityscapes recipe in plain torch.

The recipe (``Base-Cityscapes-PanopticSegmentation.yaml`` of Mask2Former) applies, in
this order:

1. resize so that the shorter side is the original one times a scale factor drawn
   uniformly from ``[min_scale, max_scale]`` (upstream draws the shorter side from
   ``{512, 614, ..., 2048}`` for 1024-pixel-high images, i.e. factors 0.5 ... 2.0);
2. a random crop of ``crop_size`` (absolute pixels; a dimension smaller than the
   crop is kept whole). The "single category max area" retry of upstream is not
   implemented;
3. SSD-style photometric distortion (``COLOR_AUG_SSD``, optional): brightness,
   contrast, saturation and hue, each applied with probability 0.5;
4. horizontal flip with probability 0.5;

and finally pads bottom/right to ``crop_size`` (image with 0, segmentation with
0 / False), so every sample of a batch has the same size.

The image is resized bilinearly (with anti-aliasing when shrinking, like PIL); the
segmentation with nearest neighbour (pixel centres aligned with the bilinear grid),
so a segmentation pixel always lies within half a source pixel of the image pixel
it labels. When enlarging, only the crop is computed; the segmentation is only ever
gathered at the crop, so the many full-size masks of a Cityscapes image are never
resized.

Every random draw comes from the ``torch.Generator`` passed in (seeded with the
sample's seed); no global random state is read or changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vocabseg.errors import InputError

__all__ = ["AugmentConfig", "TINY_AUGMENT", "TrainAugment", "color_jitter_ssd", "color_jitter_hsv"]


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of :class:`TrainAugment`.

    The defaults are Mask2Former's Cityscapes values for 1024x2048 images.

    Attributes:
        crop_size: (height, width) of every output sample.
        min_scale, max_scale: range of the resize factor of the shorter side.
        flip: random horizontal flip (p = 0.5).
        color_jitter: SSD photometric distortion (upstream ``COLOR_AUG_SSD: True``).
    """

    crop_size: tuple[int, int] = (512, 1024)
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True
    color_jitter: bool = True

    def __post_init__(self) -> None:
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise InputError(f"augment.crop_size: expected (height, width) >= 1, got {self.crop_size!r}")
        if not 0 < self.min_scale <= self.max_scale:
            raise InputError(
                "augment.min_scale/max_scale: need 0 < min_scale <= max_scale, "
                f"got {self.min_scale}, {self.max_scale}"
            )
        object.__setattr__(self, "crop_size", (int(self.crop_size[0]), int(self.crop_size[1])))


#: The recipe scaled down by 4 for the 256x512 synthetic city: 128x256 crops.
TINY_AUGMENT = AugmentConfig(crop_size=(128, 256))


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g, dtype=torch.float64).item()


def _coin(g: torch.Generator, p: float = 0.5) -> bool:
    return torch.rand((), generator=g, dtype=torch.float64).item() < p


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] RGB in 0..255 -> [3, H, W] (hue in [0, 1), saturation in [0, 1], value 0..255)."""
    r, g, b = img.unbind(0)
    maxc, _ = img.max(0)
    minc, _ = img.min(0)
    delta = maxc - minc
    sat = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, torch.remainder(hue / 6.0, 1.0), torch.zeros_like(hue))
    return torch.stack([hue, sat, maxc])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`."""
    hue, sat, val = hsv.unbind(0)
    h6 = torch.remainder(hue, 1.0) * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long() % 6
    p = val * (1.0 - sat)
    q = val * (1.0 - sat * f)
    t = val * (1.0 - sat * (1.0 - f))
    # Per sector (0..5): (r, g, b) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = torch.stack([val, t, p, q, val, p, p, val, t, p, q, val, t, p, val, val, p, q]).view(
        6, 3, *val.shape
    )
    index = sector[None, None].expand(1, 3, *val.shape)
    return table.gather(0, index)[0]


def color_jitter_ssd(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """SSD photometric distortion of a float RGB image [3, H, W] in 0..255.

    As detectron2's ``ColorAugSSDTransform``: brightness (add a value in
    [-32, 32]), then either contrast (multiply by [0.5, 1.5]) before or after
    saturation (multiply HSV saturation by [0.5, 1.5]) and hue (shift by up to
    +-18/180 of the hue circle); each of the four with probability 0.5, the result
    clipped to 0..255 after each step.
    """
    img = image
    if _coin(g):
        img = (img + _uniform(g, -32.0, 32.0)).clamp(0.0, 255.0)
    contrast_first = _coin(g)

    def contrast(x: torch.Tensor) -> torch.Tensor:
        return (x * _uniform(g, 0.5, 1.5)).clamp(0.0, 255.0) if _coin(g) else x

    if contrast_first:
        img = contrast(img)
    sat = _uniform(g, 0.5, 1.5) if _coin(g) else None
    hue = _uniform(g, -18.0, 18.0) / 180.0 if _coin(g) else None
    if sat is not None or hue is not None:
        hsv = _rgb_to_hsv(img)
        if sat is not None:
            hsv[1] = (hsv[1] * sat).clamp(0.0, 1.0)
        if hue is not None:
            hsv[0] = torch.remainder(hsv[0] + hue, 1.0)
        img = _hsv_to_rgb(hsv).clamp(0.0, 255.0)
    if not contrast_first:
        img = contrast(img)
    return img


def color_jitter_hsv(
    image: torch.Tensor,
    g: torch.Generator,
    hue_scale: tuple[float, float] = (0.9, 1.1),
    saturation_scale: tuple[float, float] = (0.9, 1.1),
    value_shift: tuple[float, float] = (-25.0, 25.0),
) -> torch.Tensor:
    """ESANet/ContMAV ``RandomHSV`` of a float RGB image [3, H, W] in 0..255.

    Always applied: hue times ``U(hue_scale)`` and saturation times
    ``U(saturation_scale)``, both clipped to [0, 1] (the hue is clipped, not wrapped,
    as the public code), value plus ``U(value_shift)`` grey levels, clipped to 0..255.
    """
    h = _uniform(g, *hue_scale)
    s = _uniform(g, *saturation_scale)
    v = _uniform(g, *value_shift)
    hsv = _rgb_to_hsv(image)
    hsv[0] = (hsv[0] * h).clamp(0.0, 1.0)
    hsv[1] = (hsv[1] * s).clamp(0.0, 1.0)
    hsv[2] = (hsv[2] + v).clamp(0.0, 255.0)
    return _hsv_to_rgb(hsv).clamp(0.0, 255.0)


def _nearest_index(out_size: int, in_size: int, start: int, length: int) -> torch.Tensor:
    """Source indices of output pixels ``start .. start+length-1`` when resizing
    ``in_size`` to ``out_size`` with centre-aligned nearest neighbour."""
    pos = (torch.arange(start, start + length, dtype=torch.float64) + 0.5) * (in_size / out_size)
    return pos.floor().long().clamp_(0, in_size - 1)


def _resize_crop(
    image: torch.Tensor, new_h: int, new_w: int, y0: int, x0: int, crop_h: int, crop_w: int
) -> torch.Tensor:
    """The window ``[y0:y0+crop_h, x0:x0+crop_w]`` of ``image`` resized bilinearly to
    ``new_h x new_w`` (half-pixel centres, edges clamped).

    Enlarging samples only the window (``grid_sample``), so a 2x scale costs the crop,
    not four times the image; shrinking resizes the whole image with anti-aliasing.
    """
    height, width = image.shape[-2:]
    if (new_h, new_w) == (height, width):
        return image[:, y0 : y0 + crop_h, x0 : x0 + crop_w]
    if new_h < height or new_w < width:
        small = F.interpolate(
            image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
        return small[0, :, y0 : y0 + crop_h, x0 : x0 + crop_w]
    gy = (torch.arange(y0, y0 + crop_h, dtype=torch.float64) + 0.5) * (2.0 / new_h) - 1.0
    gx = (torch.arange(x0, x0 + crop_w, dtype=torch.float64) + 0.5) * (2.0 / new_w) - 1.0
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).to(image.dtype)[None]
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


class TrainAugment:
    """Random resize, crop, colour jitter, flip and pad of an image with its segmentation.

    Call with ``(image, seg, generator)``:

    * ``image``: float32 [3, H, W], RGB 0..255;
    * ``seg``: any tensor [..., H, W] whose pixels label the image (bool masks
      [N, H, W], or an integer segment map [H, W]); transformed with nearest
      neighbour, padded with 0 / False;
    * ``generator``: the only source of randomness.

    Returns ``(image [3, h, w], seg [..., h, w])`` with ``(h, w) = crop_size``.
    """

    def __init__(self, cfg: AugmentConfig = AugmentConfig()):
        self.cfg = cfg

    def __call__(
        self, image: torch.Tensor, seg: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        height, width = image.shape[-2:]
        if tuple(seg.shape[-2:]) != (height, width):
            raise ValueError(f"image is {height}x{width} but segmentation is {tuple(seg.shape[-2:])}")
        scale = _uniform(generator, cfg.min_scale, cfg.max_scale)
        new_h, new_w = max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
        crop_h, crop_w = min(cfg.crop_size[0], new_h), min(cfg.crop_size[1], new_w)
        y0 = int(torch.randint(0, new_h - crop_h + 1, (1,), generator=generator).item())
        x0 = int(torch.randint(0, new_w - crop_w + 1, (1,), generator=generator).item())

        image = _resize_crop(image, new_h, new_w, y0, x0, crop_h, crop_w)
        rows = _nearest_index(new_h, height, y0, crop_h)
        cols = _nearest_index(new_w, width, x0, crop_w)
        seg = seg.index_select(-2, rows).index_select(-1, cols)

        if cfg.color_jitter:
            image = color_jitter_ssd(image, generator)
        if cfg.flip and _coin(generator):
            image, seg = image.flip(-1), seg.flip(-1)

        out_h, out_w = cfg.crop_size
        if (crop_h, crop_w) != (out_h, out_w):
            padded = image.new_zeros(3, out_h, out_w)
            padded[:, :crop_h, :crop_w] = image
            image = padded
            padded_seg = seg.new_zeros(*seg.shape[:-2], out_h, out_w)
            padded_seg[..., :crop_h, :crop_w] = seg
            seg = padded_seg
        return image.contiguous(), seg.contiguous()
