"""Patch extraction with spatial and intensity augmentation, applied to the **patch only**.

The spatial transform (flips, in-plane 90° rotations, small rotation/scaling, smooth elastic
field) is composed into one sampling grid of the patch's size; only the block of the (memory-
mapped) volume that the grid touches is read, and images are sampled linearly, labels with
nearest neighbour, by one ``grid_sample`` call each. Without a deformation the patch is an
exact integer crop (flips and 90° rotations are index permutations). Intensity augmentations
(scale, shift, gamma, Gaussian noise, multiplicative bias field) act on the (C, *patch) tensor,
vectorised over channels. All randomness comes from a ``numpy.random.Generator`` passed in, so
a patch is a pure function of (volume, centre, generator state).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Probabilities (``p_*``) and ranges of each augmentation; ``AugmentConfig.none()`` turns all off.

    Spatial: ``p_flip`` per axis in ``flip_axes`` (None = every spatial axis); ``p_rot90``:
    rotation by k·90° in the plane ``rot90_axes`` (axial plane = array axes 0 and 1 of
    nibabel-ordered volumes); ``p_deform``: one smooth deformation made of a rotation
    (±``rotate_deg`` about each axis; in-plane only in 2D), isotropic ``scale`` range and an
    elastic displacement of up to ``elastic_voxels`` (std, voxels) on a control grid every
    ``elastic_spacing`` voxels.
    Intensity (z-scored inputs): ``scale`` factor 1+U(±``intensity_scale``), ``shift``
    offset U(±``intensity_shift``), ``gamma`` in ``gamma_range`` (applied on the min-max
    rescaled patch), ``noise`` std U(0, ``noise_std``), ``bias``: a smooth separable
    multiplicative field exp(b_x(x) + b_y(y) + b_z(z)) with each profile interpolated from 4
    random values (total log-field std ≈ ``bias_std``).
    """

    p_flip: float = 0.5
    flip_axes: tuple[int, ...] | None = None
    p_rot90: float = 0.5
    rot90_axes: tuple[int, int] = (0, 1)
    p_deform: float = 0.3
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    elastic_voxels: float = 2.0
    elastic_spacing: float = 24.0
    p_scale: float = 0.5
    intensity_scale: float = 0.1
    p_shift: float = 0.5
    intensity_shift: float = 0.1
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.15
    noise_std: float = 0.1
    p_bias: float = 0.3
    bias_std: float = 0.15

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (validation-style patches)."""
        return cls(p_flip=0, p_rot90=0, p_deform=0, p_scale=0, p_shift=0, p_gamma=0, p_noise=0, p_bias=0)

    @classmethod
    def all_on(cls) -> AugmentConfig:
        """Every augmentation applied to every patch (benchmarks, stress tests)."""
        return cls(p_flip=0.5, p_rot90=0.5, p_deform=1, p_scale=1, p_shift=1, p_gamma=1, p_noise=1, p_bias=1)


def _rotation_matrix(rng: np.random.Generator, ndim: int, max_deg: float) -> np.ndarray:
    if ndim == 2:
        a = math.radians(rng.uniform(-max_deg, max_deg))
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    r = np.eye(3)
    for ax in range(3):
        a = math.radians(rng.uniform(-max_deg, max_deg))
        i, j = [k for k in range(3) if k != ax]
        g = np.eye(3)
        g[i, i] = g[j, j] = math.cos(a)
        g[i, j], g[j, i] = -math.sin(a), math.sin(a)
        r = g @ r
    return r


def _read_block(arr: np.ndarray, lo: np.ndarray, hi: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Copy ``arr[..., lo:hi]`` (spatial, hi exclusive) into a zero array with ``margin`` extra voxels
    around, zero where the box leaves the volume. Returns (block, origin of the block in volume coords)."""
    nd = len(lo)
    spatial = np.asarray(arr.shape[-nd:])
    lo_m, hi_m = lo - margin, hi + margin
    block = np.zeros((*arr.shape[:-nd], *(hi_m - lo_m)), dtype=arr.dtype)
    src_lo, src_hi = np.maximum(lo_m, 0), np.minimum(hi_m, spatial)
    if np.all(src_hi > src_lo):
        dst = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(src_lo, src_hi, lo_m))
        src = tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi))
        lead = (slice(None),) * (arr.ndim - nd)
        block[lead + dst] = arr[lead + src]
    return block, lo_m


def _flip_rot_matrix(rng: np.random.Generator, ndim: int, cfg: AugmentConfig) -> tuple[np.ndarray, list[int], int]:
    """Signed permutation for flips + 90° rotation; also returns (flipped axes, k) for the integer path."""
    axes = list(range(ndim)) if cfg.flip_axes is None else [a for a in cfg.flip_axes if a < ndim]
    flips = [a for a in axes if rng.random() < cfg.p_flip]
    k = int(rng.integers(1, 4)) if rng.random() < cfg.p_rot90 else 0
    m = np.eye(ndim)
    if k:
        i, j = cfg.rot90_axes
        rot = np.eye(ndim)
        c, s = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
        # same direction as np.rot90(patch, k, axes=(i, j)) in the integer path
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, s, -s, c
        m = rot @ m
    for a in flips:
        m[:, a] *= -1
    return m, flips, k


def extract_patch(image: np.ndarray, label: np.ndarray | None, centre: np.ndarray, patch_size: tuple[int, ...],
                  rng: np.random.Generator, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spatially augmented patch of (C, *S) ``image`` and (*S) ``label`` centred on voxel ``centre``.

    Without augmentation the patch is ``volume[centre - P // 2 : centre - P // 2 + P]`` (so
    patch index ``P // 2`` is the centre voxel). Flips and 90° rotations permute that box;
    a deformation maps patch index ``i`` to ``g + M (i - (P - 1) / 2) + e(i)`` where ``g`` is the
    box's geometric centre, ``M`` = rotation·scale·(90° rotation, flips) and ``e`` the elastic
    field. Outside the volume the image is 0 and the label background. Returns
    (float32 (C, *P), int64 (*P) or None).
    """
    nd = len(patch_size)
    p = np.asarray(patch_size)
    centre = np.asarray(centre, dtype=np.int64)
    m, flips, k = _flip_rot_matrix(rng, nd, cfg)
    # the box of the volume that rotates onto the patch (axes swapped for odd k)
    box = p.copy()
    if k % 2:
        i, j = cfg.rot90_axes
        box[i], box[j] = p[j], p[i]
    lo = centre - box // 2
    if rng.random() < cfg.p_deform:
        # rotate/scale/deform about the geometric centre of that box (a half-voxel for even sizes),
        # so that without rotation and scaling the grid path reproduces the integer path exactly
        return _deformed_patch(image, label, lo + (box - 1) / 2.0, p, m, rng, cfg)
    # exact integer path: crop the box, then permute indices
    img, _ = _read_block(image, lo, lo + box, margin=0)
    lab = _read_block(label, lo, lo + box, margin=0)[0] if label is not None else None
    c0 = img.ndim - nd
    if k:
        img = np.rot90(img, k, axes=(c0 + cfg.rot90_axes[0], c0 + cfg.rot90_axes[1]))
        lab = np.rot90(lab, k, axes=cfg.rot90_axes) if lab is not None else None
    if flips:
        img = np.flip(img, axis=[c0 + a for a in flips])
        lab = np.flip(lab, axis=flips) if lab is not None else None
    img_t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    lab_t = torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64)) if lab is not None else None
    return img_t, lab_t


def _deformed_patch(image: np.ndarray, label: np.ndarray | None, centre: np.ndarray, p: np.ndarray, m: np.ndarray,
                    rng: np.random.Generator, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Grid path: patch voxel i samples ``centre + A (i - (P - 1) / 2) + e(i)`` (``centre`` may be fractional)."""
    nd = len(p)
    s = rng.uniform(*cfg.scale)
    a = _rotation_matrix(rng, nd, cfg.rotate_deg) @ (m * s)
    # The whole coordinate map x(u) = centre + A u + e(u) is built on the elastic control grid
    # and upsampled once (multi-linear interpolation reproduces the affine part exactly), so the
    # full-resolution grid costs one interpolation. Its bounding box is that of the control values.
    ctrl = [max(2, int(math.ceil(n / cfg.elastic_spacing)) + 1) for n in p]
    u = np.meshgrid(*[np.linspace(-(n - 1) / 2, (n - 1) / 2, k) for n, k in zip(p, ctrl)], indexing="ij")
    x = np.einsum("rc,c...->r...", a, np.stack(u)) + centre.reshape(nd, *([1] * nd))
    if cfg.elastic_voxels > 0:
        x = x + rng.standard_normal(x.shape) * rng.uniform(0, cfg.elastic_voxels)
    spatial = np.asarray(image.shape[-nd:])
    if np.all(spatial >= 2):
        # sample the (memory-mapped) volume in place: no block copy; outside it grid_sample gives 0
        vol = _tensor_view(image)
        lab_vol = _tensor_view(label) if label is not None else None
        origin = np.zeros(nd, dtype=np.int64)
    else:  # degenerate volume (a dimension of size 1): sample a zero-padded copy of the block
        flat = x.reshape(nd, -1)
        lo = np.clip(np.floor(flat.min(1)).astype(np.int64), 0, spatial)
        hi = np.maximum(np.clip(np.floor(flat.max(1)).astype(np.int64) + 2, 0, spatial), lo + 1)
        block, origin = _read_block(image, lo, hi, margin=1)
        vol = torch.from_numpy(block)
        lab_vol = torch.from_numpy(_read_block(label, lo, hi, margin=1)[0]) if label is not None else None
    size = np.asarray(vol.shape[-nd:], dtype=np.float64)
    norm = (x - origin.reshape(nd, *([1] * nd))) * (2.0 / (size - 1)).reshape(nd, *([1] * nd)) - 1.0
    coarse = torch.from_numpy(norm[::-1].astype(np.float32).copy())[None]  # grid_sample: last axis first
    mode = "trilinear" if nd == 3 else "bilinear"
    # channels-last interpolation output makes the (1, *P, nd) grid contiguous without a copy
    coarse = coarse.contiguous(memory_format=torch.channels_last_3d if nd == 3 else torch.channels_last)
    g = F.interpolate(coarse, size=tuple(int(n) for n in p), mode=mode, align_corners=True).movedim(1, -1)
    img = F.grid_sample(vol[None].float(), g, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    lab_t = None
    if lab_vol is not None:
        lab_t = _nearest_gather(lab_vol, g, size)
    return img, lab_t


def _tensor_view(arr: np.ndarray) -> torch.Tensor:
    """Tensor sharing memory with ``arr`` (memory maps are opened copy-on-write, hence writable)."""
    if not arr.flags.writeable:  # e.g. a read-only memmap: torch needs writable memory to share it
        arr = np.array(arr)
    return torch.from_numpy(arr)


def _nearest_gather(lab: torch.Tensor, g: torch.Tensor, size: np.ndarray) -> torch.Tensor:
    """Nearest-neighbour label sampling at grid ``g`` (normalised, align_corners=True, last dim reversed
    axes) by direct indexing of the integer label volume: no float copy of the volume; 0 outside."""
    nd = lab.dim()
    idx = None
    valid = None
    for ax in range(nd):
        n = int(size[ax])
        # coordinate of array axis ``ax`` is grid component nd-1-ax
        c = torch.round((g[0, ..., nd - 1 - ax] + 1.0) * (0.5 * (n - 1)))
        ok = (c >= 0) & (c <= n - 1)
        valid = ok if valid is None else valid & ok
        ci = c.clamp_(0, n - 1).to(torch.int64)
        idx = ci if idx is None else idx * n + ci  # row-major linear index
    flat = lab.reshape(-1) if lab.is_contiguous() else lab.contiguous().reshape(-1)
    out = flat[idx].to(torch.int64)
    return out.mul_(valid)


def augment_intensity(img: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Intensity augmentations of a (C, *P) float32 patch (in place where possible), per-channel parameters."""
    c = img.shape[0]
    nd = img.ndim - 1
    bshape = (c,) + (1,) * nd
    if rng.random() < cfg.p_gamma:
        lo, hi = torch.aminmax(img.reshape(c, -1), dim=1)
        mn = lo.view(bshape)
        rngv = (hi.view(bshape) - mn).clamp_min(1e-6)
        gam = torch.from_numpy(rng.uniform(*cfg.gamma_range, c).astype(np.float32)).view(bshape)
        img = img.sub_(mn).div_(rngv).clamp_(0, 1).pow_(gam).mul_(rngv).add_(mn)
    if rng.random() < cfg.p_bias:
        # smooth multiplicative field per channel, separable (a product of 1-D profiles along each
        # axis) so that it is applied by nd broadcast multiplications without a full-size field
        for ax in range(nd):
            n = img.shape[1 + ax]
            coarse = torch.from_numpy((rng.standard_normal((1, c, 4)) * cfg.bias_std / math.sqrt(nd))
                                      .astype(np.float32))
            prof = F.interpolate(coarse, size=n, mode="linear", align_corners=True)[0].exp_()
            shape = [c] + [1] * nd
            shape[1 + ax] = n
            img = img.mul_(prof.view(shape))
    if rng.random() < cfg.p_scale:
        img = img.mul_(torch.from_numpy(1 + rng.uniform(-cfg.intensity_scale, cfg.intensity_scale, c)
                                        .astype(np.float32)).view(bshape))
    if rng.random() < cfg.p_shift:
        img = img.add_(torch.from_numpy(rng.uniform(-cfg.intensity_shift, cfg.intensity_shift, c)
                                        .astype(np.float32)).view(bshape))
    if rng.random() < cfg.p_noise:
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        std = torch.from_numpy(rng.uniform(0, cfg.noise_std, c).astype(np.float32)).view(bshape)
        img = img.add_(torch.randn(img.shape, generator=gen).mul_(std))
    return img


def describe(cfg: AugmentConfig) -> dict[str, Any]:
    """Plain dict of the configuration (for logs/checkpoints)."""
    return asdict(cfg)
