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
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnseg.data.errors import DataError

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
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nilearn is not installed: it provides the MNI ICBM152 template used by the phantoms")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


class _threads:
    """Run torch ops single-threaded inside the block: these element-wise ops on ~1 M voxels are
    memory-bound, and with several threads on a shared 2-core machine they run >10× slower."""

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
    import nibabel as nib

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
    from scipy.ndimage import distance_transform_edt

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


def synth_brats_case(seed: int, index: int, spacing: int = 2) -> dict:
    """One phantom case in memory: ``{"images": {mod: int16 (X, Y, Z)}, "seg": uint8, "affine", "info"}``.

    Deterministic in ``(seed, index, spacing)``; labels 0/1/2/4 (BraTS 2020 convention).
    """
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


def _save_int(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Fast NIfTI write (gzip level 1) via a temp file + rename."""
    import gzip

    import nibabel as nib

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
                     prefix: str = "BraTS20_Synth", start: int = 0) -> list[Path]:
    """Write ``cases`` phantoms in the BraTS 2018–2021 layout; returns the case folders.

    ``<out_dir>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` with ``<case> = <prefix>_<NNN>``
    (numbered from ``start + 1``), int16 images and uint8 labels 0/1/2/4, plus
    ``<out_dir>/synth_info.json`` describing the tumours. Case ``i`` depends only on
    ``(seed, i, spacing)``, so adding cases never changes the existing ones.
    """
    if cases < 1:
        raise ValueError(f"cases must be ≥ 1, got {cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, info = [], {}
    for i in range(start, start + cases):
        case_id = f"{prefix}_{i + 1:03d}"
        c = synth_brats_case(seed, i, spacing)
        d = out / case_id
        d.mkdir(exist_ok=True)
        for mod, arr in c["images"].items():
            _save_int(arr, c["affine"], d / f"{case_id}_{mod}.nii.gz")
        _save_int(c["seg"], c["affine"], d / f"{case_id}_seg.nii.gz")
        info[case_id] = c["info"]
        paths.append(d)
    meta = {"generator": "attnseg.data.synth.make_synth_brats", "seed": seed, "spacing_mm": spacing,
            "label_convention": "brats2020", "cases": info}
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
