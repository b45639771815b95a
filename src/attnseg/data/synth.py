"""Built-in phantom datasets made from the MNI ICBM152 2009 template shipped with nilearn.

:func:`make_synth_brats` writes a BraTS-2020-layout folder of brain-tumour phantoms,
:func:`make_synth_tissue` a brain-tissue task (background, CSF, grey matter, white matter).

Anatomy: the ICBM152 2009a (symmetric) T1 template and its grey/white-matter probability
maps, read from the installed ``nilearn`` package (``nilearn/datasets/data/``; no download).
CSF is the brain mask (template T1 > 0, already skull-stripped) minus GM and WM.

Geometry: the BraTS grid, 240×240×155 voxels at 1 mm, or 120×120×78 voxels at 2 mm
(78 = ceil(155 / 2): the 2 mm grid covers the same field of view plus one extra mm at the top).
The affine has BraTS' axis directions (x and y flipped: diag(-s, -s, s)) and a translation
that puts the undeformed template's brain centre in the grid centre, so world coordinates
are (approximately, before the per-case deformation) MNI millimetres. Voxel (i, j, k) of the
2 mm grid covers 1 mm voxels 2i..2i+1 of the 1 mm grid.

Each case: a random smooth deformation (small affine + elastic field), 1–3 tumours, each
with an oedema halo (ED, label 2), a tumour core with an enhancing rim (ET, label 4, at
least 4.5 mm thick so > 2 voxels at 2 mm) around a necrotic core (NCR, label 1), a radial
mass effect pushing the surrounding tissue away; about 20 % of cases have no enhancing
tumour (the whole core is non-enhancing, label 1), and some tumours are solid (no necrosis).
Sequence contrasts (relative to white matter on T1 = 1):

=======  ====  ====  ====  ====  ====  ====  ====
seq      CSF   GM    WM    ED    ET    NCR   NET
=======  ====  ====  ====  ====  ====  ====  ====
t1       0.30  0.72  1.00  0.62  0.70  0.35  0.45
t1ce     0.32  0.75  1.00  0.65  1.60  0.30  0.45
t2       1.80  0.95  0.65  1.45  1.05  1.70  1.75
flair    0.30  0.90  0.72  1.50  1.10  0.85  1.15
=======  ====  ====  ====  ====  ====  ====  ====

each jittered by ±4 % per case, with smooth lesion texture, a multiplicative bias field
(±~15 %), Rician noise (σ ≈ 3 % of WM) inside the brain, a random scanner gain, stored as
int16 with zero background (skull-stripped, as BraTS).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from attnseg.data.errors import DataError
from attnseg.runtime.optional import MissingExtraError, missing_message

BRATS_SHAPE_1MM = (240, 240, 155)
MODALITIES = ("t1", "t1ce", "t2", "flair")
# columns: CSF, GM, WM, ED, ET, NCR, NET (non-enhancing core in cases without ET)
CONTRAST = {
    "t1": (0.30, 0.72, 1.00, 0.62, 0.70, 0.35, 0.45),
    "t1ce": (0.32, 0.75, 1.00, 0.65, 1.60, 0.30, 0.45),
    "t2": (1.80, 0.95, 0.65, 1.45, 1.05, 1.70, 1.75),
    "flair": (0.30, 0.90, 0.72, 1.50, 1.10, 0.85, 1.15),
}
_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_T1_WM_LEVEL = 220.0  # mean template T1 value in white matter (uint8 scale)


def template_dir() -> Path:
    """Folder of nilearn's shipped MNI ICBM152 2009 files (inside the installed package)."""
    spec = importlib.util.find_spec("nilearn")  # optional: the [phantom] extra (only its data files are read)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(missing_message("nilearn", feature="the MNI template of the phantom data"))
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


class _threads:
    """Run torch ops single-threaded inside the block: these element-wise ops on ~1 M voxels are
    memory-bound, and with several threads on a shared 2-core machine they run much slower."""

    def __init__(self, n: int = 1):
        self.n = n

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def _int16(img: torch.Tensor) -> np.ndarray:
    return np.clip(np.rint(img.numpy()), 0, 32767).astype(np.int16)


@functools.lru_cache(maxsize=2)
def _template(spacing: float) -> tuple[torch.Tensor, np.ndarray]:
    """Template stack (1, 4, X, Y, Z) float32 = (T1/WM-level, GM, WM, brain mask), and its affine.

    For spacing > 1 mm the maps are box-averaged to that spacing (anti-aliasing).
    """
    d = template_dir()
    f = int(round(spacing))
    maps = []
    affine = np.eye(4)
    with _threads(1):
        for key, name in _TEMPLATE_FILES.items():
            p = d / name
            if not p.is_file():
                raise DataError(f"{p}: MNI template file missing from the nilearn package")
            img = nib.load(str(p))
            arr = torch.from_numpy(np.asarray(img.dataobj))
            affine = np.asarray(img.affine, dtype=np.float64)
            chans = [arr.float() * (1.0 / (_T1_WM_LEVEL if key == "t1" else 255.0))]
            if key == "t1":
                chans.append((arr > 0).float())  # brain mask (the template is skull-stripped)
            for c in chans:
                if f > 1:  # box-average to the coarser grid so that sampling it does not alias
                    pad = [q for n in reversed(c.shape) for q in (0, (-n) % f)]
                    c = F.avg_pool3d(F.pad(c[None, None], pad), f)[0, 0]
                maps.append(c)
    stack = torch.stack([maps[0], maps[2], maps[3], maps[1]])[None]  # T1, GM, WM, mask
    if f > 1:
        affine = affine @ np.array([[f, 0, 0, (f - 1) / 2], [0, f, 0, (f - 1) / 2], [0, 0, f, (f - 1) / 2],
                                    [0, 0, 0, 1]])
    return stack.contiguous(), affine


def brats_grid(spacing: int = 2) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the BraTS grid at ``spacing`` mm (1 → 240×240×155, 2 → 120×120×78)."""
    if spacing not in (1, 2):
        raise ValueError(f"spacing must be 1 or 2 (mm), got {spacing!r}")
    shape = tuple(int(math.ceil(n / spacing)) for n in BRATS_SHAPE_1MM)
    # 1 mm grid: x, y flipped as in BraTS; centre voxel (119.5, 119.5, 77) at MNI (0, -17, 5),
    # the brain centre of the ICBM152 2009 template.
    a1 = np.array([[-1.0, 0, 0, 119.5], [0, -1.0, 0, 102.5], [0, 0, 1.0, -72.0], [0, 0, 0, 1]])
    if spacing == 1:
        return shape, a1
    off = (spacing - 1) / 2.0
    scale = np.array([[spacing, 0, 0, off], [0, spacing, 0, off], [0, 0, spacing, off], [0, 0, 0, 1]])
    return shape, a1 @ scale


def _smooth_noise(rng: np.random.Generator, channels: int, coarse: tuple[int, int, int],
                  shape: tuple[int, ...]) -> torch.Tensor:
    """(channels, *shape) smooth random field, ~unit std, from coarse Gaussian noise upsampled (cubic-ish)."""
    z = torch.from_numpy(rng.standard_normal((1, channels, *coarse)).astype(np.float32))
    return F.interpolate(z, size=shape, mode="trilinear", align_corners=True)[0]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(a)
    sx, sy, sz = np.sin(a)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_orthonormal(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))[None, :]


class _Anatomy:
    """A deformed template sampled on the output grid (mm coordinates of every voxel kept)."""

    def __init__(self, rng: np.random.Generator, spacing: int, tumours: list[dict] | None = None):
        self.shape, self.affine = brats_grid(spacing)
        self.spacing = spacing
        stack, t_aff = _template(float(spacing))
        shape = self.shape
        # world (mm) coordinates of every output voxel, (3, X, Y, Z)
        axes = [torch.arange(n, dtype=torch.float32) for n in shape]
        ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"))
        a = torch.from_numpy(self.affine.astype(np.float32))
        world = torch.einsum("ab,bxyz->axyz", a[:3, :3], ijk) + a[:3, 3, None, None, None]
        self.world = world
        pts = world
        # mass effect (applied first, in output space): tissue pushed radially away from each
        # tumour centre; r' = r (1 - k exp(-r²/2σ²)) is monotone for k < 1
        for t in tumours or []:
            c = torch.tensor(t["centre"], dtype=torch.float32)[:, None, None, None]
            d = pts - c
            r2 = (d * d).sum(0, keepdim=True)
            pts = c + d * (1.0 - t["mass_k"] * torch.exp(-r2 / (2.0 * t["mass_sigma"] ** 2)))
        # random affine about the brain centre + smooth elastic field (mm)
        centre = torch.tensor([0.0, -17.0, 5.0])[:, None, None, None]
        m = _rotation(rng, 7.0) @ np.diag(rng.uniform(0.93, 1.07, 3))
        shift = rng.uniform(-4, 4, 3)
        mt = torch.from_numpy(m.astype(np.float32))
        pts = torch.einsum("ab,bxyz->axyz", mt, pts - centre) + centre + torch.from_numpy(
            shift.astype(np.float32))[:, None, None, None]
        pts = pts + 3.0 * _smooth_noise(rng, 3, (5, 5, 4), shape)
        # world -> template voxel -> grid_sample's normalised coordinates (last dim = z, y, x order)
        t_inv = torch.from_numpy(np.linalg.inv(t_aff).astype(np.float32))
        vox = torch.einsum("ab,bxyz->axyz", t_inv[:3, :3], pts) + t_inv[:3, 3, None, None, None]
        size = torch.tensor(stack.shape[2:], dtype=torch.float32)[:, None, None, None]
        norm = 2.0 * vox / (size - 1) - 1.0
        grid = norm.flip(0).permute(1, 2, 3, 0)[None]
        out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        self.t1 = out[0]
        self.gm = out[1].clamp(0, 1)
        self.wm = out[2].clamp(0, 1)
        self.mask = out[3].clamp(0, 1)
        self.csf = (self.mask - self.gm - self.wm).clamp(0, 1)


@functools.lru_cache(maxsize=1)
def _tumour_site_candidates() -> np.ndarray:
    """MNI mm coordinates of white-matter points deep inside the brain (candidate tumour centres).

    Returned with the depth (mm to the brain surface) as a 4th column.
    """
    stack, t_aff = _template(2.0)
    wm = stack[0, 2].numpy()
    mask = stack[0, 3].numpy() > 0.5
    depth = distance_transform_edt(mask, sampling=2.0)
    idx = np.argwhere((wm > 0.6) & (depth > 12))
    world = idx @ t_aff[:3, :3].T + t_aff[:3, 3]
    return np.concatenate([world, depth[tuple(idx.T)][:, None]], axis=1).astype(np.float64)


def _draw_tumours(rng: np.random.Generator) -> tuple[list[dict], bool]:
    """1–3 tumours: centre (MNI mm), core radii, orientation, necrosis fraction, oedema extent, mass effect."""
    cands = _tumour_site_candidates()
    n = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
    has_et = bool(rng.random() > 0.2)
    tumours: list[dict] = []
    for _ in range(n):
        for _attempt in range(50):
            r = float(rng.uniform(11.0, 24.0)) if not tumours else float(rng.uniform(8.0, 16.0))
            pick = cands[rng.integers(len(cands))]
            if pick[3] < 0.9 * r + 6:
                continue
            centre = pick[:3] + rng.uniform(-2, 2, 3)
            if all(np.linalg.norm(centre - t["centre"]) > 0.8 * (r + t["radius"]) for t in tumours):
                break
        radii = r * rng.uniform(0.8, 1.2, 3)
        # rim (ET) thickness (1 - necrosis fraction) × smallest radius ≥ 4.5 mm (> 2 voxels at 2 mm)
        max_nf = max(0.0, 1.0 - 4.5 / radii.min())
        nf = 0.0 if (rng.random() < 0.15 or max_nf < 0.45) else float(rng.uniform(0.45, min(0.8, max_nf)))
        tumours.append({
            "centre": np.asarray(centre, dtype=np.float64),
            "radius": r,
            "radii": radii,
            "rot": _random_orthonormal(rng),
            "necrosis": nf,
            "oedema": float(rng.uniform(1.6, 2.6)),
            "mass_k": float(rng.uniform(0.15, 0.4)),
            "mass_sigma": 1.3 * r,
        })
    return tumours, has_et


def _sig(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


def synth_brats_case(seed: int, index: int, spacing: int = 2, difficulty: str = "easy") -> dict:
    """One phantom case in memory: ``{"images": {mod: int16 (X, Y, Z)}, "seg": uint8, "affine", "info"}``.

    Deterministic in ``(seed, index, spacing, difficulty)``; labels 0/1/2/4 (BraTS 2020 convention).
    ``difficulty="realistic"``: :func:`synth_brats_case_realistic`.
    """
    if difficulty == "realistic":
        return synth_brats_case_realistic(seed, index, spacing)
    if difficulty != "easy":
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    rng = np.random.default_rng([int(seed), int(index), 7919])
    tumours, has_et = _draw_tumours(rng)
    with torch.no_grad(), _threads(1):
        anat = _Anatomy(rng, spacing, tumours)
        shape = anat.shape
        world = anat.world
        brain = anat.mask
        tissue_ok = (anat.gm + anat.wm).clamp(0, 1)  # oedema spreads in parenchyma, not CSF
        s_ed = torch.zeros(shape)
        s_tc = torch.zeros(shape)
        s_nc = torch.zeros(shape)
        tau = 0.06  # boundary softness in normalised-radius units (partial volume)
        boundary = _smooth_noise(rng, 2, (9, 9, 7), shape)
        for t in tumours:
            ext = t["oedema"] * t["radii"].max() * 1.35 + 4  # bounding box half-size, mm
            lo_w, hi_w = t["centre"] - ext, t["centre"] + ext
            inv = np.linalg.inv(anat.affine)
            corners = np.array([[x, y, z] for x in (lo_w[0], hi_w[0]) for y in (lo_w[1], hi_w[1])
                                for z in (lo_w[2], hi_w[2])]) @ inv[:3, :3].T + inv[:3, 3]
            lo = np.clip(np.floor(corners.min(0)).astype(int), 0, shape)
            hi = np.clip(np.ceil(corners.max(0)).astype(int) + 1, 0, shape)
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            d = world[(slice(None), *sl)] - torch.tensor(t["centre"], dtype=torch.float32)[:, None, None, None]
            local = torch.einsum("ab,bxyz->axyz", torch.from_numpy(t["rot"].T.astype(np.float32)), d)
            local = local / torch.tensor(t["radii"], dtype=torch.float32)[:, None, None, None]
            rho = local.norm(dim=0)
            nb = boundary[(slice(None), *sl)]
            rho_c = rho * (1.0 + 0.08 * nb[0])  # mildly lobulated core
            rho_e = rho * (1.0 + 0.22 * nb[1])  # irregular, finger-like oedema
            ed = _sig((t["oedema"] - rho_e) / tau) * tissue_ok[sl]
            tc = _sig((1.0 - rho_c) / tau)
            nc = _sig((t["necrosis"] - rho_c) / tau) if t["necrosis"] > 0 else torch.zeros_like(tc)
            s_ed[sl] = torch.maximum(s_ed[sl], ed)
            s_tc[sl] = torch.maximum(s_tc[sl], tc)
            s_nc[sl] = torch.maximum(s_nc[sl], nc)
        s_tc = torch.maximum(s_tc, s_nc)
        s_ed = torch.maximum(s_ed, s_tc)
        seg = torch.zeros(shape, dtype=torch.uint8)
        seg[s_ed > 0.5] = 2
        seg[s_tc > 0.5] = 4 if has_et else 1
        seg[s_nc > 0.5] = 1
        # tumour tissue replaces brain tissue; the mask is widened so a tumour at the surface is imaged
        brain = torch.maximum(brain, s_ed)
        texture = _smooth_noise(rng, 1, (24, 24, 16), shape)[0]
        bias = _smooth_noise(rng, len(MODALITIES), (3, 3, 3), shape)
        images = {}
        w_ed = s_ed - s_tc
        w_rim = s_tc - s_nc
        for m_i, mod in enumerate(MODALITIES):
            c = np.asarray(CONTRAST[mod]) * rng.uniform(0.96, 1.04, 7)
            csf, gm, wm, ed, et, ncr, net = (float(v) for v in c)
            if mod == "t1":  # the template's own T1 texture
                healthy = anat.t1 * (wm / 1.0)
            else:
                healthy = anat.csf * csf + anat.gm * gm + anat.wm * wm
            rim = et if has_et else net
            core = ncr if has_et else net
            lesion = w_ed * ed + w_rim * rim + s_nc * core
            img = healthy * (1 - s_ed) + lesion * (1.0 + 0.06 * texture)
            img = img * torch.exp(0.12 * bias[m_i])
            sigma = 0.03
            n1 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
            n2 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
            img = torch.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician magnitude
            img = img * (brain > 0.3) * float(rng.uniform(350, 900))
            images[mod] = _int16(img)
    info = {
        "has_et": has_et,
        "tumours": [{"centre_mm": [round(float(v), 2) for v in t["centre"]], "radius_mm": round(t["radius"], 2),
                     "necrosis": round(t["necrosis"], 3), "oedema": round(t["oedema"], 3)} for t in tumours],
    }
    return {"images": images, "seg": seg.numpy(), "affine": anat.affine, "info": info}


# --------------------------------------------------------------------------------------------
# The "realistic" phantom (``difficulty="realistic"``). Every knob and its distribution lives in
# REALISTIC_KNOBS (documented in docs/data.md, section "Realistic phantoms"); the "easy"
# generator above is unchanged.

DIFFICULTIES = ("easy", "realistic")

REALISTIC_KNOBS: dict[str, object] = {
    # scanner "sites": a case belongs to one of `sites` sites (uniform); each site has its own
    # contrast table, gain, noise level and bias-field strength (drawn once per (seed, site))
    "sites": 4,
    "site_contrast_jitter": 0.10,       # per modality and tissue: CONTRAST × U(1 - j, 1 + j)
    "site_gain": (250.0, 1600.0),       # scanner gain (int16 units per WM), U
    "site_noise": (0.02, 0.055),        # Rician σ relative to WM, U
    "site_bias": (0.06, 0.25),          # std of the log bias field, U
    "case_contrast_jitter": 0.03,       # per case on top of the site: × U(1 - j, 1 + j)
    "case_gain": (0.85, 1.15),          # per case on top of the site gain, U
    # lesions
    "tumours_p": (0.55, 0.30, 0.15),    # P(1, 2, 3 main tumours)
    "p_no_et": 0.15,                    # cases without enhancing tumour (whole core label 1)
    "radius_first": (9.0, 22.0),        # mean core radius of the first tumour (mm), U
    "radius_other": (6.0, 14.0),        # further main tumours (mm), U
    "satellites_mean": 1.0,             # satellites per case ~ Poisson(mean), at most 4
    "satellite_radius": (1.5, 4.0),     # mm, U: r < 2.29 mm is < 50 mm³
    "satellite_distance": (6.0, 22.0),  # mm from the parent tumour's core surface, U
    "satellite_p_oedema": 0.5,          # a satellite has its own oedema halo
    "p_solid": 0.15,                    # core without necrosis
    "p_thin_rim": 0.5,                  # thin enhancing rim ...
    "thin_rim_mm": (1.0, 3.0),          # ... of this thickness (mm), U
    "rim_mm": (3.0, 8.0),               # otherwise (mm), U
    "p_broken_rim": 0.4,                # part of the rim does not enhance (label 1) ...
    "broken_fraction": (0.15, 0.5),     # ... about this fraction of it, U
    "rim_heterogeneity": (0.15, 0.45),  # ET texture amplitude on every sequence, U
    "enhancement": (1.10, 1.60),        # T1ce ET intensity relative to WM, U
    # non-enhancing tumour margin (label 1, part of TC) outside the enhancing rim of a main tumour;
    # its signal is the local oedema's moved a fraction of the way to NET's, fading outwards
    "p_margin": 0.6,                    # main tumours with a margin ...
    "margin": (0.05, 0.25),             # ... this thick (core radii), U; kept ≥ 0.15 inside the oedema
    "margin_contrast": (0.10, 0.50),    # NET-vs-oedema contrast at the rim (0 = like oedema), U
    "margin_fade": 0.7,                 # ... falling by this fraction at the margin's outer edge
    "oedema_extent": (1.6, 2.6),        # oedema radius / core radius, U
    "oedema_fade": (0.08, 0.30),        # width of the oedema contrast fade (core-radius units), U
    "oedema_contrast": (0.55, 0.95),    # fraction of the full oedema contrast at its centre, U
    # acquisition
    "supersample": 2,                   # cores rendered on a grid 2× finer per axis, box-averaged
    "p_thick": 0.3,                     # T1, T2, FLAIR acquired with thick axial slices ...
    "thick_mm": (4.0, 6.0),             # ... this thick (box profile, contiguous), U; T1ce stays 3-D
    "misregistration_mm": 1.0,          # T1, T2, FLAIR translated by U(-m, m) mm per axis vs T1ce
    "misregistration_deg": 1.0,         # and rotated by U(-d, d) degrees per axis
    "p_bad_strip": 0.5,                 # imperfect skull stripping: mask boundary wobble ...
    "strip_wobble": (0.1, 0.35),        # ... of this amplitude (threshold shift of the blurred mask), U
    "p_remnant": 0.3,                   # of those, remnants of scalp/dura left in the mask
    "p_ghost": 0.12,                    # one sequence with a motion ghost (copy shifted by N/2 along y) ...
    "ghost_amplitude": (0.04, 0.12),    # ... of this relative amplitude, U
}

# scalp/dura remnants left by imperfect skull stripping (relative to WM): bright fat on T1
_REMNANT = {"t1": 1.25, "t1ce": 1.3, "t2": 1.05, "flair": 0.85}


def _u(rng: np.random.Generator, key: str) -> float:
    lo, hi = REALISTIC_KNOBS[key]  # type: ignore[misc]
    return float(rng.uniform(lo, hi))


def realistic_site(seed: int, site: int) -> dict:
    """The acquisition parameters of one scanner site (deterministic in ``(seed, site)``)."""
    rng = np.random.default_rng([int(seed), int(site), 6563])
    j = float(REALISTIC_KNOBS["site_contrast_jitter"])  # type: ignore[arg-type]
    return {
        "site": int(site),
        "contrast": {m: [round(float(v), 4) for v in rng.uniform(1 - j, 1 + j, 7)] for m in MODALITIES},
        "gain": _u(rng, "site_gain"),
        "noise": _u(rng, "site_noise"),
        "bias": _u(rng, "site_bias"),
    }


def _cos_field(rng: np.random.Generator, terms: int = 6, freq: tuple[float, float] = (0.4, 1.4)):
    """A smooth random function of normalised lesion coordinates (3, ...) -> (...), ~unit std:
    a sum of cosines with random directions, frequencies (cycles per core radius) and phases."""
    dirs = rng.standard_normal((terms, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = dirs * rng.uniform(*freq, (terms, 1)) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, terms)
    kt = torch.from_numpy(k.astype(np.float32))
    scale = math.sqrt(2.0 / terms)

    def f(local: torch.Tensor) -> torch.Tensor:
        arg = torch.einsum("ka,a...->k...", kt, local)
        out = torch.zeros(local.shape[1:])
        for i in range(terms):
            out += torch.cos(arg[i] + float(phase[i]))
        return out * scale

    return f


def _draw_realistic(rng: np.random.Generator) -> dict:
    """Per-case lesion and acquisition knobs of a realistic phantom (no rendering; cheap)."""
    K = REALISTIC_KNOBS
    cands = _tumour_site_candidates()
    n = int(rng.choice([1, 2, 3], p=list(K["tumours_p"])))  # type: ignore[arg-type]
    has_et = bool(rng.random() >= float(K["p_no_et"]))  # type: ignore[arg-type]
    tumours: list[dict] = []
    rng_m = rng.spawn(1)[0]  # margin draws: a child stream, so the other draws do not move
    for _ in range(n):
        for _attempt in range(50):
            r = _u(rng, "radius_first") if not tumours else _u(rng, "radius_other")
            pick = cands[rng.integers(len(cands))]
            if pick[3] < 0.9 * r + 6:
                continue
            centre = pick[:3] + rng.uniform(-2, 2, 3)
            if all(np.linalg.norm(centre - t["centre"]) > 0.8 * (r + t["radius"]) for t in tumours):
                break
        radii = r * rng.uniform(0.8, 1.2, 3)
        solid = bool(rng.random() < float(K["p_solid"]))  # type: ignore[arg-type]
        thin = bool(rng.random() < float(K["p_thin_rim"]))  # type: ignore[arg-type]
        rim = _u(rng, "thin_rim_mm") if thin else _u(rng, "rim_mm")
        nf = 0.0 if solid else max(0.0, 1.0 - rim / float(radii.min()))
        broken = bool(rng.random() < float(K["p_broken_rim"]))  # type: ignore[arg-type]
        rot = _random_orthonormal(rng)
        broken_fraction = _u(rng, "broken_fraction") if broken else 0.0
        oedema = _u(rng, "oedema_extent")
        has_margin = bool(rng_m.random() < float(K["p_margin"]))  # type: ignore[arg-type]
        lo_m, hi_m = K["margin"]  # type: ignore[misc]
        margin = min(float(rng_m.uniform(lo_m, hi_m)), oedema - 1.15) if has_margin else 0.0
        m_contrast = _u(rng_m, "margin_contrast") if has_margin else 0.0
        tumours.append({
            "centre": np.asarray(centre, dtype=np.float64), "radius": r, "radii": radii,
            "rot": rot, "necrosis": nf, "rim_mm": 0.0 if solid else rim,
            "broken": broken_fraction, "oedema": oedema, "fade": _u(rng, "oedema_fade"),
            "mass_k": float(rng.uniform(0.15, 0.4)), "mass_sigma": 1.3 * r, "satellite": False,
            "margin": margin, "margin_contrast": m_contrast,
        })
    n_sat = min(int(rng.poisson(float(K["satellites_mean"]))), 4)  # type: ignore[arg-type]
    for _ in range(n_sat):
        parent = tumours[int(rng.integers(len(tumours)))]
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        dist = float(parent["radii"].max()) + _u(rng, "satellite_distance")
        rs = _u(rng, "satellite_radius")
        has_oedema = bool(rng.random() < float(K["satellite_p_oedema"]))  # type: ignore[arg-type]
        tumours.append({
            "centre": parent["centre"] + dist * d, "radius": rs, "radii": np.full(3, rs),
            "rot": np.eye(3), "necrosis": 0.0, "rim_mm": 0.0, "broken": 0.0,
            "oedema": float(rng.uniform(2.0, 3.5)) if has_oedema else 0.0, "fade": _u(rng, "oedema_fade"),
            "mass_k": 0.0, "mass_sigma": 1.0, "satellite": True, "margin": 0.0, "margin_contrast": 0.0,
        })
    mis = {}
    for m in ("t1", "t2", "flair"):
        mis[m] = {"shift_mm": [round(float(v), 3) for v in rng.uniform(-1, 1, 3) * float(K["misregistration_mm"])],
                  "rot_deg": [round(float(v), 3) for v in rng.uniform(-1, 1, 3) * float(K["misregistration_deg"])]}
    bad_strip = bool(rng.random() < float(K["p_bad_strip"]))  # type: ignore[arg-type]
    ghost = None
    if rng.random() < float(K["p_ghost"]):  # type: ignore[arg-type]
        ghost = {"modality": MODALITIES[int(rng.integers(4))], "amplitude": round(_u(rng, "ghost_amplitude"), 4)}
    jc = float(K["case_contrast_jitter"])  # type: ignore[arg-type]
    return {
        "tumours": tumours, "has_et": has_et,
        "contrast_jitter": {m: rng.uniform(1 - jc, 1 + jc, 7) for m in MODALITIES},
        "gain": _u(rng, "case_gain"),
        "enhancement": _u(rng, "enhancement"),
        "rim_heterogeneity": _u(rng, "rim_heterogeneity"),
        "oedema_contrast": _u(rng, "oedema_contrast"),
        "thick_mm": _u(rng, "thick_mm") if rng.random() < float(K["p_thick"]) else None,  # type: ignore[arg-type]
        "misregistration": mis,
        "strip_wobble": _u(rng, "strip_wobble") if bad_strip else 0.0,
        "remnant": bool(bad_strip and rng.random() < float(K["p_remnant"])),  # type: ignore[arg-type]
        "ghost": ghost,
    }


def _box_slices(centre: np.ndarray, ext: float, affine: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Voxel bounding box (slices) of the cube ``centre ± ext`` mm, clipped to the grid."""
    lo_w, hi_w = centre - ext, centre + ext
    inv = np.linalg.inv(affine)
    corners = np.array([[x, y, z] for x in (lo_w[0], hi_w[0]) for y in (lo_w[1], hi_w[1])
                        for z in (lo_w[2], hi_w[2])]) @ inv[:3, :3].T + inv[:3, 3]
    lo = np.clip(np.floor(corners.min(0)).astype(int), 0, shape)
    hi = np.clip(np.ceil(corners.max(0)).astype(int) + 1, 0, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _fine_world(affine: np.ndarray, sl: tuple[slice, ...], ss: int) -> torch.Tensor:
    """World (mm) coordinates (3, ss·nx, ss·ny, ss·nz) of the ss³ sub-voxel centres of a box."""
    axes = [torch.arange(s.start * ss, s.stop * ss, dtype=torch.float32) / ss + (0.5 / ss - 0.5) for s in sl]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    a = torch.from_numpy(affine.astype(np.float32))
    return torch.einsum("ab,bxyz->axyz", a[:3, :3], ijk) + a[:3, 3, None, None, None]


def _thick_slices(img: torch.Tensor, thick_vox: float, offset: float) -> torch.Tensor:
    """Simulate a thick-slice acquisition along the last axis and its linear resampling back to the grid.

    Contiguous slices of ``thick_vox`` voxels (box profile) starting at ``offset`` voxels; the
    slice values are then linearly interpolated at every grid position (as BraTS' resampling of
    thick-slice scans to 1 mm does)."""
    nz = img.shape[-1]
    # cumulative sum along z for box averages over fractional intervals [a, b)
    cs = torch.cat([torch.zeros((*img.shape[:-1], 1)), img.cumsum(-1)], -1)

    def integral(p: np.ndarray) -> torch.Tensor:  # ∫_0^p img dz with p in voxels (img constant per voxel)
        p = np.clip(p, 0, nz)
        i = np.floor(p).astype(np.int64)
        frac = torch.from_numpy((p - i).astype(np.float32))
        return cs[..., torch.from_numpy(i)] + frac * img[..., torch.from_numpy(np.minimum(i, nz - 1))]

    starts = np.arange(offset - thick_vox, nz, thick_vox)
    a, b = np.clip(starts, 0, nz), np.clip(starts + thick_vox, 0, nz)
    width = torch.from_numpy(np.maximum(b - a, 1e-6).astype(np.float32))
    vals = (integral(b) - integral(a)) / width  # (..., n_slices)
    centres = (a + b) / 2
    z = np.arange(nz) + 0.5
    j = np.clip(np.searchsorted(centres, z) - 1, 0, len(centres) - 2)
    w = torch.from_numpy(np.clip((z - centres[j]) / (centres[j + 1] - centres[j]), 0, 1).astype(np.float32))
    jt = torch.from_numpy(j.astype(np.int64))
    return vals[..., jt] * (1 - w) + vals[..., jt + 1] * w


def _rigid(img: torch.Tensor, affine: np.ndarray, shift_mm: list[float], rot_deg: list[float]) -> torch.Tensor:
    """Resample ``img`` (X, Y, Z) moved by a small rigid transform about the grid centre (trilinear)."""
    a = np.deg2rad(rot_deg)
    cx, cy, cz = np.cos(a)
    sx, sy, sz = np.sin(a)
    r = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
         @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
    spacing = np.abs(np.diag(affine)[:3])
    shape = np.array(img.shape, dtype=np.float64)
    # in voxel units about the centre: out(p) = img(R (p - c) + c + t)
    t = np.asarray(shift_mm) / spacing
    # normalised coordinates (align_corners=True): u = 2 p / (n - 1) - 1; R acts on mm, so scale
    s = spacing * (shape - 1) / 2
    m = np.diag(1 / s) @ r @ np.diag(s)
    tn = 2 * t / (shape - 1)
    theta = np.zeros((3, 4))
    # grid_sample's last coordinate is x = our last axis: reverse the axis order
    perm = [2, 1, 0]
    theta[:, :3] = m[np.ix_(perm, perm)]
    theta[:, 3] = tn[perm]
    grid = F.affine_grid(torch.from_numpy(theta.astype(np.float32))[None], [1, 1, *img.shape], align_corners=True)
    return F.grid_sample(img[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]


def _box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool3d(x[None, None], k, stride=1, padding=k // 2, count_include_pad=False)[0, 0]


def synth_brats_case_realistic(seed: int, index: int, spacing: int = 2) -> dict:
    """One realistic phantom case (same output as :func:`synth_brats_case`; ``info`` records every knob)."""
    rng = np.random.default_rng([int(seed), int(index), 7919, 2])
    site = realistic_site(seed, int(rng.integers(int(REALISTIC_KNOBS["sites"]))))  # type: ignore[arg-type]
    kn = _draw_realistic(rng)
    tumours, has_et = kn["tumours"], kn["has_et"]
    ss = int(REALISTIC_KNOBS["supersample"])  # type: ignore[arg-type]
    with torch.no_grad(), _threads(1):
        anat = _Anatomy(rng, spacing, [t for t in tumours if not t["satellite"]])
        shape, world, affine = anat.shape, anat.world, anat.affine
        tissue_ok = (anat.gm + anat.wm).clamp(0, 1)
        ed_lab = torch.zeros(shape)   # oedema label map (soft; > 0.5 = WT)
        ed_sig = torch.zeros(shape)   # oedema signal fraction (fades into tissue)
        tc = torch.zeros(shape)       # partial-volume fractions of the core, necrosis and enhancing rim
        nc = torch.zeros(shape)
        et = torch.zeros(shape)
        mg = torch.zeros(shape)       # non-enhancing margin fraction, and its NET-signal weight
        mg_w = torch.zeros(shape)
        tau = 0.06
        fade_m = float(REALISTIC_KNOBS["margin_fade"])  # type: ignore[arg-type]
        for t in tumours:
            lob = _cos_field(rng, 6, (0.3, 1.0))      # lobulated core
            fing = _cos_field(rng, 8, (0.5, 1.5))     # finger-like oedema
            brk = _cos_field(rng, 6, (0.5, 1.5))      # where a broken rim does not enhance
            rot = torch.from_numpy(t["rot"].T.astype(np.float32))
            centre = torch.tensor(t["centre"], dtype=torch.float32)[:, None, None, None]
            radii = torch.tensor(t["radii"], dtype=torch.float32)[:, None, None, None]
            if t["oedema"] > 0:
                sl = _box_slices(t["centre"], t["oedema"] * float(t["radii"].max()) * 1.35 + 4, affine, shape)
                local = torch.einsum("ab,bxyz->axyz", rot, world[(slice(None), *sl)] - centre) / radii
                rho_e = local.norm(dim=0) * (1.0 + 0.2 * fing(local))
                ok = tissue_ok[sl]
                ed_lab[sl] = torch.maximum(ed_lab[sl], _sig((t["oedema"] - rho_e) / tau) * ok)
                ed_sig[sl] = torch.maximum(ed_sig[sl], _sig((t["oedema"] - rho_e) / t["fade"]) * ok)
            # the core on a grid ss× finer, box-averaged: partial volume of thin rims and small nodules
            sl = _box_slices(t["centre"], float(t["radii"].max()) * (1.3 + t["margin"] * 1.2) + 3, affine, shape)
            local = torch.einsum("ab,bxyz->axyz", rot, _fine_world(affine, sl, ss) - centre) / radii
            rho_c = local.norm(dim=0) * (1.0 + (0.0 if t["satellite"] else 0.08) * lob(local))
            f_tc = (rho_c < 1.0).float()
            f_nc = (rho_c < t["necrosis"]).float() if t["necrosis"] > 0 else torch.zeros_like(f_tc)
            f_et = f_tc - f_nc
            if t["broken"] > 0:  # the quantile of a unit-std field that leaves `broken` of the rim dark
                q = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - t["broken"])))
                f_et = f_et * (brk(local) < q).float()
            fs = [f_tc, f_nc, f_et]
            if t["margin"] > 0:  # an irregular shell of non-enhancing tumour around the rim
                mfield = _cos_field(rng, 6, (0.5, 1.5))
                rho_m = (rho_c - 1.0) / (t["margin"] * (1.0 + 0.5 * mfield(local)).clamp_min(0.2))
                f_mg = ((rho_m >= 0) & (rho_m < 1)).float()
                fs += [f_mg, f_mg * t["margin_contrast"] * (1 - fade_m * rho_m.clamp(0, 1))]
            pool = [F.avg_pool3d(f[None, None], ss)[0, 0] for f in fs]
            tc[sl] = torch.maximum(tc[sl], pool[0])
            nc[sl] = torch.maximum(nc[sl], pool[1])
            et[sl] = torch.maximum(et[sl], pool[2])
            if t["margin"] > 0:
                mg[sl] = torch.maximum(mg[sl], pool[3])
                mg_w[sl] = torch.maximum(mg_w[sl], pool[4])
        if not has_et:
            et.zero_()
        et = torch.minimum(et, tc - nc).clamp_min(0)
        net = (tc - nc - et).clamp_min(0)  # non-enhancing core (broken rims, cases without ET)
        mg = torch.minimum(mg, 1 - tc)     # the margin lies outside the core proper
        mg_w = torch.minimum(mg_w, mg)
        ed_lab = torch.maximum(ed_lab, tc + mg)
        seg = torch.zeros(shape, dtype=torch.uint8)
        seg[ed_lab > 0.5] = 2
        core = tc + mg >= 0.5
        seg[core] = 1
        seg[core & (et >= torch.maximum(nc, net + mg))] = 4
        wt = seg > 0
        # skull stripping: the template mask widened by the lesion, its boundary wobbling when imperfect
        brain = torch.maximum(anat.mask, ed_lab)
        keep = brain > 0.3
        wob = kn["strip_wobble"]
        remnant = torch.zeros(shape)
        if wob > 0:
            noise = _smooth_noise(rng, 2, (10, 10, 7), shape)
            # only the boundary moves: the threshold stays below 1, so the interior is always kept
            keep = _box_blur(brain, 5) > (0.5 + wob * noise[0]).clamp(0.05, 0.95)
            if kn["remnant"]:
                shell = (_box_blur(brain, 7) > 0.05) & (brain < 0.3) & (noise[1] > 0.3)
                remnant = shell.float()
                keep = keep | shell
        keep = keep | wt  # labels always lie inside the imaged region
        texture = _smooth_noise(rng, 2, (24, 24, 16), shape)
        bias = _smooth_noise(rng, len(MODALITIES), (3, 3, 3), shape)
        lesion_tex = 1.0 + 0.06 * texture[0]
        e = ed_sig * kn["oedema_contrast"] * (1 - tc)
        images = {}
        for m_i, mod in enumerate(MODALITIES):
            c = np.asarray(CONTRAST[mod]) * np.asarray(site["contrast"][mod]) * kn["contrast_jitter"][mod]
            csf, gm, wm, c_ed, c_et, c_ncr, c_net = (float(v) for v in c)
            if mod == "t1ce":
                c_et = kn["enhancement"] * float(site["contrast"][mod][4])
            healthy = anat.t1 * wm if mod == "t1" else anat.csf * csf + anat.gm * gm + anat.wm * wm
            healthy = healthy + remnant * _REMNANT[mod] * (1.0 + 0.15 * texture[1])
            et_tex = 1.0 + kn["rim_heterogeneity"] * texture[1]
            img = ((1 - tc) * (1 - e) * healthy + e * c_ed * lesion_tex
                   + (et * c_et * et_tex + nc * c_ncr + net * c_net) * lesion_tex)
            # the margin: its share of the local oedema signal moved toward NET's
            oed = (1 - e) * healthy + e * c_ed * lesion_tex
            img = img + mg_w * (c_net * lesion_tex - oed)
            img = img * torch.exp(site["bias"] * bias[m_i])
            if mod != "t1ce":
                if kn["thick_mm"] is not None:
                    img = _thick_slices(img, kn["thick_mm"] / spacing, offset=float(rng.uniform(0, 1)))
                mr = kn["misregistration"][mod]
                img = _rigid(img, affine, mr["shift_mm"], mr["rot_deg"])
            if kn["ghost"] is not None and kn["ghost"]["modality"] == mod:
                img = img + kn["ghost"]["amplitude"] * torch.roll(img, shape[1] // 2, dims=1)
            sigma = site["noise"]
            n1 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
            n2 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
            img = torch.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
            images[mod] = _int16(img * keep * (site["gain"] * kn["gain"]))
    voxel_mm3 = float(spacing) ** 3
    info = {
        "difficulty": "realistic", "has_et": has_et,
        "site": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in site.items()},
        "gain": round(site["gain"] * kn["gain"], 2),
        "enhancement": round(kn["enhancement"], 4), "rim_heterogeneity": round(kn["rim_heterogeneity"], 4),
        "oedema_contrast": round(kn["oedema_contrast"], 4),
        "thick_mm": None if kn["thick_mm"] is None else round(kn["thick_mm"], 3),
        "misregistration": kn["misregistration"], "strip_wobble": round(kn["strip_wobble"], 4),
        "remnant": kn["remnant"], "ghost": kn["ghost"],
        "tumours": [{"centre_mm": [round(float(v), 2) for v in t["centre"]], "radius_mm": round(t["radius"], 2),
                     "satellite": t["satellite"], "necrosis": round(t["necrosis"], 3), "rim_mm": round(t["rim_mm"], 3),
                     "broken": round(t["broken"], 3), "oedema": round(t["oedema"], 3), "fade": round(t["fade"], 3),
                     "margin": round(t["margin"], 3), "margin_contrast": round(t["margin_contrast"], 3),
                     "volume_mm3": round(4 / 3 * math.pi * float(np.prod(t["radii"])), 1)} for t in tumours],
        "label_volumes_mm3": {str(v): float((seg == v).sum()) * voxel_mm3 for v in (1, 2, 4)},
    }
    return {"images": images, "seg": seg.numpy(), "affine": affine, "info": info}


def _save_int(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Fast NIfTI write (gzip level 1) via a temp file + rename."""
    img = nib.Nifti1Image(arr, affine)
    img.set_data_dtype(arr.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["xyzt_units"] = 10  # mm, s
    img.header["vox_offset"] = 352  # 348-byte header + 4-byte (empty) extension flag
    tmp = path.with_name(".tmp_" + path.name)
    with gzip.open(tmp, "wb", compresslevel=1) as fh:
        fh.write(img.header.binaryblock)
        fh.write(b"\x00" * 4)
        fh.write(np.asfortranarray(arr).tobytes(order="F"))
    os.replace(tmp, path)


def make_synth_brats(out_dir: str | os.PathLike, cases: int = 30, spacing: int = 2, seed: int = 0,
                     prefix: str = "BraTS20_Synth", start: int = 0, difficulty: str = "easy") -> list[Path]:
    """Write ``cases`` phantoms in the BraTS 2018–2021 layout; returns the case folders.

    ``<out_dir>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` with ``<case> = <prefix>_<NNN>``
    (numbered from ``start + 1``), int16 images and uint8 labels 0/1/2/4, plus
    ``<out_dir>/synth_info.json`` describing the tumours. Case ``i`` depends only on
    ``(seed, i, spacing, difficulty)``, so adding cases never changes the existing ones.
    ``difficulty``: ``"easy"`` (the default) or ``"realistic"`` (docs/data.md).
    """
    if cases < 1:
        raise ValueError(f"cases must be ≥ 1, got {cases}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, info = [], {}
    for i in range(start, start + cases):
        case_id = f"{prefix}_{i + 1:03d}"
        c = synth_brats_case(seed, i, spacing, difficulty)
        d = out / case_id
        d.mkdir(exist_ok=True)
        for mod, arr in c["images"].items():
            _save_int(arr, c["affine"], d / f"{case_id}_{mod}.nii.gz")
        _save_int(c["seg"], c["affine"], d / f"{case_id}_seg.nii.gz")
        info[case_id] = c["info"]
        paths.append(d)
    meta = {"generator": "attnseg.data.synth.make_synth_brats", "seed": seed, "spacing_mm": spacing,
            "difficulty": difficulty, "label_convention": "brats2020", "cases": info}
    (out / "synth_info.json").write_text(json.dumps(meta, indent=1))
    return paths


def synth_tissue_case(seed: int, index: int, spacing: int = 2) -> dict:
    """One tissue phantom: ``{"image": int16 T1 (X, Y, Z), "seg": uint8 0 bg/1 CSF/2 GM/3 WM, "affine"}``."""
    rng = np.random.default_rng([int(seed), int(index), 104729])
    with torch.no_grad(), _threads(1):
        anat = _Anatomy(rng, spacing, None)
        probs = torch.stack([anat.csf, anat.gm, anat.wm])
        seg = (probs.argmax(0) + 1).to(torch.uint8)
        seg[anat.mask <= 0.5] = 0
        img = anat.t1 * torch.exp(0.12 * _smooth_noise(rng, 1, (3, 3, 3), anat.shape)[0])
        n1 = torch.from_numpy(rng.standard_normal(anat.shape).astype(np.float32))
        n2 = torch.from_numpy(rng.standard_normal(anat.shape).astype(np.float32))
        img = torch.sqrt((img + 0.03 * n1) ** 2 + (0.03 * n2) ** 2) * (anat.mask > 0.3) * float(rng.uniform(350, 900))
    return {"image": _int16(img), "seg": seg.numpy(), "affine": anat.affine}


def make_synth_tissue(out_dir: str | os.PathLike, cases: int = 10, spacing: int = 2, seed: int = 0,
                      prefix: str = "Tissue") -> list[Path]:
    """Write brain-tissue phantoms: ``<out>/images/<case>.nii.gz`` (T1) and ``<out>/masks/<case>.nii.gz``.

    Labels 0 background, 1 CSF, 2 grey matter, 3 white matter (argmax of the deformed
    probability maps inside the brain). Same grid, affine and deformation model as
    :func:`make_synth_brats`; readable with ``find_cases(out, layout="malc")``. Returns the image paths.
    """
    if cases < 1:
        raise ValueError(f"cases must be ≥ 1, got {cases}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(cases):
        case_id = f"{prefix}_{i + 1:03d}"
        c = synth_tissue_case(seed, i, spacing)
        _save_int(c["image"], c["affine"], out / "images" / f"{case_id}.nii.gz")
        _save_int(c["seg"], c["affine"], out / "masks" / f"{case_id}.nii.gz")
        paths.append(out / "images" / f"{case_id}.nii.gz")
    return paths
