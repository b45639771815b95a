"""Reading and writing medical images with their geometry.

Arrays are returned in **nibabel array order** (x, y, z for 3-D NIfTI), for every format:
NIfTI goes through nibabel, everything else (.nrrd, .mha, .mhd, .nii read by SimpleITK, ...)
through SimpleITK, transposed to the same order and with an affine converted from ITK's LPS
convention to NIfTI's RAS convention, so that a prediction written back with
:func:`save_image` lands in the input's geometry.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from attnseg.data.errors import DataError
from attnseg.runtime.optional import require

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".img", ".hdr", ".vtk")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES


def strip_suffix(name: str) -> str:
    """File name without its image suffix: ``"a_t1.nii.gz"`` → ``"a_t1"``."""
    low = name.lower()
    for s in IMAGE_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return name


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith(IMAGE_SUFFIXES)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def load_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray, Any]:
    """``(shape, affine 4×4, header)`` without reading the voxels (NIfTI) — cheap geometry checks."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if _is_nifti(path):
            img = nib.load(str(path))
            return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64), img.header
        arr, affine, header = load_image(path)
        return arr.shape, affine, header
    except DataError:
        raise
    except Exception as exc:  # nibabel/SimpleITK raise many different types
        raise DataError(f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from exc


def load_image(path: str | os.PathLike, dtype: Any = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """Read an image: ``(array, affine 4×4 float64, header)``.

    ``array`` is in nibabel order (x, y, z[, t]); ``dtype`` casts it (default: the stored
    type for integers, float32 for scaled/float data). ``header`` is the nibabel header for
    NIfTI and ``None`` for SimpleITK formats. Raises :class:`DataError` naming the file when
    it is missing, unreadable or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if _is_nifti(path):
            img = nib.load(str(path))
            proxy = img.dataobj
            scaled = getattr(proxy, "slope", 1.0) not in (1.0, None) or getattr(proxy, "inter", 0.0) not in (0.0, None)
            if scaled or np.dtype(img.get_data_dtype()).kind == "f":
                arr = np.asarray(img.get_fdata(dtype=np.float32))
            else:
                arr = np.asarray(proxy)
            affine, header = np.asarray(img.affine, dtype=np.float64), img.header
        else:
            sitk = require("SimpleITK", feature=f"reading {path.name}")  # optional: the [itk] extra

            im = sitk.ReadImage(str(path))
            arr = sitk.GetArrayFromImage(im)
            arr = arr.transpose(tuple(range(arr.ndim))[::-1])  # (z, y, x) -> (x, y, z)
            affine = _sitk_affine(im)
            header = None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from exc
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr, affine, header


def _sitk_affine(im: Any) -> np.ndarray:
    """4×4 RAS affine of a SimpleITK image (ITK stores LPS direction/origin)."""
    d = im.GetDimension()
    direction = np.asarray(im.GetDirection(), dtype=np.float64).reshape(d, d)
    spacing = np.asarray(im.GetSpacing(), dtype=np.float64)
    origin = np.asarray(im.GetOrigin(), dtype=np.float64)
    aff = np.eye(4)
    n = min(d, 3)
    aff[:n, :n] = (direction * spacing[None, :])[:n, :n]
    aff[:n, 3] = origin[:n]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS -> RAS
    return flip @ aff


def spacing_from_affine(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel sizes (mm) = column norms of the 3×3 part of the affine."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(axis=0)))


def file_mode() -> int:
    """Mode a new file gets from ``open()`` under the current umask (``0o666 & ~umask``).

    ``tempfile.mkstemp`` creates files ``0600`` whatever the umask; files written through a
    temporary file are given this mode before the rename, so users' files follow their umask.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (mode follows the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_image(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, header: Any = None,
               dtype: Any = None) -> Path:
    """Write ``array`` (nibabel order) with ``affine`` atomically (temp file + rename).

    NIfTI through nibabel (``header`` of the source image keeps its metadata, the data type
    follows ``dtype`` or the array); other suffixes through SimpleITK.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if _is_nifti(path):
            hdr = header.copy() if header is not None else None
            img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=hdr)
            img.set_data_dtype(arr.dtype)
            if hdr is not None:  # the source's scaling must not apply to e.g. label maps
                img.header.set_slope_inter(1.0, 0.0)
            img.set_qform(np.asarray(affine), code=1)
            img.set_sform(np.asarray(affine), code=1)
            nib.save(img, tmp)
        else:
            sitk = require("SimpleITK", feature="writing non-NIfTI images")  # optional: the [itk] extra

            im = sitk.GetImageFromArray(arr.transpose(tuple(range(arr.ndim))[::-1]))
            ras = np.asarray(affine, dtype=np.float64)
            lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
            n = arr.ndim if arr.ndim <= 3 else 3
            sp = np.sqrt((lps[:n, :n] ** 2).sum(axis=0))
            im.SetSpacing([float(s) for s in sp])
            im.SetOrigin([float(o) for o in lps[:n, 3]])
            im.SetDirection([float(v) for v in (lps[:n, :n] / sp[None, :]).ravel()])
            sitk.WriteImage(im, tmp)
        os.chmod(tmp, file_mode())  # mkstemp made it 0600; the user's umask decides
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
