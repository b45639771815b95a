"""Finding and loading cases in the common dataset layouts.

One code path underneath (:class:`Case` → :func:`load_case`), a small adapter per layout:

* ``brats``  – ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (BraTS 2018–2021, labels
  0/1/2/4) or ``<root>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (BraTS 2023+, labels 0/1/2/3);
  the release is detected from the file names. Channel order is configurable (default
  t1, t1ce, t2, flair; the 2023 names t1n, t1c, t2w, t2f map onto these).
* ``nnunet`` – ``dataset.json`` + ``imagesTr/<case>_<XXXX>.<ext>`` + ``labelsTr/<case>.<ext>`` (v1 or v2 json).
* ``malc`` / ``hvsmr`` – ``<root>[/<phase>]/images/*`` and ``masks/*`` (the AMIS reference layout),
  paired **by case id**, not by listing order.
* ``msd`` – Medical Segmentation Decathlon: ``dataset.json`` (``modality``, ``labels``) +
  ``imagesTr/<case>.nii.gz`` holding every channel on the 4th axis + ``labelsTr/<case>.nii.gz``.
* ``folder`` – a CSV or JSON manifest listing each case's image(s) and label.
* ``images`` – a plain folder of image files, one case per file (or per ``<case>_XXXX`` group of
  nnU-Net channel files); no labels (for prediction).

``subset`` picks the training (``Tr``/``train``) or held-out (``Ts``/``test``) part of an
nnU-Net or MSD dataset, or ``all``; giving ``.../imagesTs`` itself as the root works as well.

Cases are always returned sorted by case id, so any split made from them is portable.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.data.errors import DataError
from attnseg.data.io import is_image_file, load_header, load_image, spacing_from_affine, strip_suffix
from attnseg.data.labels import declared_labels

LAYOUTS = ("auto", "brats", "nnunet", "msd", "malc", "hvsmr", "folder", "images")
BRATS_CHANNELS = ("t1", "t1ce", "t2", "flair")
# modality aliases: BraTS 2023+ names (and a few spellings seen in the wild) -> canonical name
BRATS_ALIASES = {"t1n": "t1", "t1c": "t1ce", "t1gd": "t1ce", "t2w": "t2", "t2f": "flair", "fla": "flair"}
_BRATS_2023_NAMES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
_MASK_SUFFIXES = ("_seg", "_label", "_labels", "_mask", "_masks", "_glm", "_gt", "-seg", "-label", "_lab")
MANIFEST_NAMES = ("manifest.csv", "manifest.json", "dataset.csv", "cases.csv", "cases.json")


@dataclass
class Case:
    """One case on disk.

    ``image_paths`` are in channel order; ``label_path`` is ``None`` for unlabelled cases.
    ``label_convention``: ``"brats2020"`` (0/1/2/4), ``"brats2023"`` (0/1/2/3) or ``"plain"``
    (class indices as stored). ``extra`` holds layout details (channel names, declared labels).
    """

    case_id: str
    image_paths: list[Path]
    label_path: Path | None
    layout: str
    label_convention: str = "plain"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> list[str]:
        return list(self.extra.get("channels", [f"ch{i}" for i in range(len(self.image_paths))]))

    @property
    def files(self) -> list[Path]:
        return list(self.image_paths) + ([self.label_path] if self.label_path is not None else [])


# ----------------------------------------------------------------------------------------- layouts
def detect_layout(root: str | os.PathLike) -> str:
    """Guess the layout of ``root`` (a folder, or a manifest file for ``folder``)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if root.is_file():
        if root.suffix.lower() in (".csv", ".json"):
            return "folder"
        raise DataError(f"{root}: not a dataset folder or a CSV/JSON manifest")
    if (root / "dataset.json").is_file() and any((root / f"images{s}").is_dir() for s in ("Tr", "Ts")):
        return _nnunet_or_msd(root)
    if root.name in ("imagesTr", "imagesTs") and (root.parent / "dataset.json").is_file():
        return _nnunet_or_msd(root.parent)
    if any((root / n).is_file() for n in MANIFEST_NAMES):
        return "folder"
    if (root / "images").is_dir() or any((root / ph / "images").is_dir() for ph in ("train", "test", "val")):
        return "malc"
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        names = [n.lower() for n in os.listdir(sub)]
        if any(re.search(r"[_-](flair|t2f|t1ce|t1c|seg)\.(nii|nii\.gz)$", n) for n in names):
            return "brats"
    if any(is_image_file(f) and not f.name.startswith(".") for f in root.iterdir() if f.is_file()):
        return "images"
    raise DataError(f"{root}: cannot detect the dataset layout (expected BraTS case folders, an nnU-Net "
                    f"dataset.json + imagesTr, images/ + masks/, a manifest file or a folder of image files); "
                    f"pass layout=...")


def _visible_images(folder: Path) -> list[Path]:
    """Image files of ``folder``, sorted; hidden files (``._x.nii.gz`` from macOS archives) skipped."""
    return [f for f in sorted(folder.iterdir()) if f.is_file() and is_image_file(f) and not f.name.startswith(".")]


def _nnunet_or_msd(root: Path) -> str:
    """nnU-Net names channel files ``<case>_XXXX``; MSD keeps all channels in one 4-D file."""
    for sub in ("imagesTr", "imagesTs"):
        if (root / sub).is_dir():
            files = _visible_images(root / sub)
            if files:
                return "nnunet" if all(re.search(r"_\d{4}$", strip_suffix(f.name)) for f in files) else "msd"
    return "nnunet"


def _subset_code(subset: str) -> str:
    codes = {"tr": "Tr", "train": "Tr", "training": "Tr", "ts": "Ts", "test": "Ts", "all": "all"}
    if str(subset).lower() not in codes:
        raise ValueError(f"unknown subset {subset!r}; choose train, test or all")
    return codes[str(subset).lower()]


def label_names_from_json(labels: Any) -> dict[int, str]:
    """``dataset.json`` ``labels`` → ``{value: name}`` for single-valued labels (background left out).

    Accepts MSD / nnU-Net v1 (``{"0": "background", "1": "edema"}``) and nnU-Net v2
    (``{"background": 0, "edema": 1}``); v2 region entries (lists of values) are left out.
    """
    out: dict[int, str] = {}
    if not isinstance(labels, dict):
        return out
    for k, v in labels.items():
        if str(k).lstrip("-").isdigit() and not isinstance(v, (list, dict)):
            out[int(k)] = str(v)
        elif isinstance(v, int) or (isinstance(v, str) and v.lstrip("-").isdigit()):
            out[int(v)] = str(k)
    return {k: v for k, v in sorted(out.items()) if k != 0}


def read_dataset_json(root: str | os.PathLike) -> dict[str, Any]:
    """``root/dataset.json`` as a dict (``{}`` when absent); :class:`DataError` when unreadable."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: not a JSON object")
    return meta


def find_cases(root: str | os.PathLike, layout: str = "auto", *, channels: list[str] | tuple[str, ...] | None = None,
               require_labels: bool = True, phase: str | None = None, subset: str = "Tr",
               label_convention: str | None = None, incomplete: str = "raise") -> list[Case]:
    """List the cases under ``root``, sorted by case id.

    Args:
        root: dataset folder (or manifest file for ``layout="folder"``).
        layout: one of :data:`LAYOUTS`; ``"auto"`` detects it.
        channels: channel order. BraTS: modality names (default t1, t1ce, t2, flair; 2023 names
            accepted). nnU-Net: channel names from ``dataset.json`` or indices as strings.
        require_labels: a missing label file is an error (else ``label_path=None``).
        phase: sub-folder for ``malc``/``hvsmr`` (``train``/``test``); default: ``root`` itself
            when it holds ``images/``, else ``train``.
        subset: ``"Tr"``/``"train"``, ``"Ts"``/``"test"`` or ``"all"`` for ``nnunet`` and ``msd``
            (``root`` may also be the ``imagesTr``/``imagesTs`` folder itself).
        label_convention: override the detected convention.
        incomplete: ``"raise"`` (default): a case with a missing channel/modality file is an
            error; ``"keep"``: it is returned with ``extra["error"]`` set (prediction skips it
            and goes on with the others).

    Raises :class:`DataError` naming the folder/file for an empty dataset, missing files or
    duplicate case ids.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    root = Path(root)
    subset = _subset_code(subset)
    if root.is_dir() and root.name in ("imagesTr", "imagesTs") and (root.parent / "dataset.json").is_file() \
            and layout in ("auto", "nnunet", "msd"):
        subset, root = root.name[-2:], root.parent  # .../imagesTs given: that part of the dataset
    if layout == "auto":
        layout = detect_layout(root)
    elif not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    keep = incomplete == "keep"
    if layout == "brats":
        cases = _find_brats(root, channels, require_labels, keep)
    elif layout in ("nnunet", "msd"):
        parts = ("Tr", "Ts") if subset == "all" else (subset,)
        if subset == "all":
            parts = tuple(s for s in parts if (root / f"images{s}").is_dir()) or ("Tr",)
        find = _find_nnunet if layout == "nnunet" else _find_msd
        cases = [c for s in parts for c in find(root, channels, require_labels, s, keep)]
    elif layout in ("malc", "hvsmr"):
        cases = _find_paired(root, layout, require_labels, phase)
    elif layout == "images":
        cases = _find_images(root, require_labels, keep)
    else:
        cases = _find_manifest(root, require_labels)
    if not cases:
        raise DataError(f"{root}: empty dataset (no {layout} cases found)")
    seen: dict[str, Case] = {}
    for c in cases:
        if c.case_id in seen:
            raise DataError(f"{c.image_paths[0]}: duplicate case id {c.case_id!r} "
                            f"(also {seen[c.case_id].image_paths[0]})")
        seen[c.case_id] = c
        if label_convention is not None:
            c.label_convention = label_convention
    return sorted(cases, key=lambda c: c.case_id)


def _find_brats(root: Path, channels: Any, require_labels: bool, keep: bool = False) -> list[Case]:
    want = [BRATS_ALIASES.get(c.lower(), c.lower()) for c in (channels or BRATS_CHANNELS)]
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = {f.name: f for f in d.iterdir() if f.is_file() and is_image_file(f)}
        if not files:
            continue
        # modality key = text after the last '_' or '-' of the stem
        mods: dict[str, Path] = {}
        seps: set[str] = set()
        for name, f in files.items():
            stem = strip_suffix(name)
            m = re.search(r"[_-]([A-Za-z0-9]+)$", stem)
            if not m:
                continue
            key = m.group(1).lower()
            seps.add(stem[m.start()])
            mods[BRATS_ALIASES.get(key, key)] = f
        is_2023 = any(re.search(r"-(t1n|t1c|t2w|t2f)$", strip_suffix(n).lower()) for n in files)
        convention = "brats2023" if is_2023 else "brats2020"
        missing = [c for c in want if c not in mods]
        if missing:
            shown = [(_BRATS_2023_NAMES.get(c, c) if is_2023 else c) for c in missing]
            sep = "-" if is_2023 else "_"
            msg = f"{d}: missing modality file(s) " + ", ".join(f"{d.name}{sep}{s}.nii.gz" for s in shown)
            if not keep:
                raise DataError(msg)
            cases.append(Case(d.name, [mods[c] for c in want if c in mods], None, "brats", convention,
                              {"channels": want, "error": msg}))
            continue
        label = mods.get("seg")
        if label is None:  # BraTS 2020 case 355 ships a mis-named label file
            odd = [f for n, f in files.items() if "seg" in n.lower() and f not in mods.values()]
            label = odd[0] if odd else None
        if label is None and require_labels:
            sep = "-" if is_2023 else "_"
            raise DataError(f"{d}: missing label file {d.name}{sep}seg.nii.gz")
        cases.append(Case(d.name, [mods[c] for c in want], label, "brats", convention,
                          {"channels": want, "release": "2023+" if is_2023 else "2018-2021"}))
    return cases


def _find_nnunet(root: Path, channels: Any, require_labels: bool, subset: str, keep: bool = False) -> list[Case]:
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing (nnU-Net layout needs dataset.json)")
    meta = read_dataset_json(root)
    names = meta.get("channel_names") or meta.get("modality") or {"0": "ch0"}
    names = {int(k): str(v) for k, v in names.items()}
    ending = meta.get("file_ending", ".nii.gz")
    labels = meta.get("labels", {})
    if labels and all(str(k).lstrip("-").isdigit() for k in labels):  # v1: {"0": "background"}
        declared = sorted(int(k) for k in labels)
    else:  # v2: {"background": 0, "tumour": [1, 2]} (region lists flattened)
        vals: list[int] = []
        for v in labels.values():
            vals.extend(v if isinstance(v, list) else [v])
        declared = sorted(set(int(v) for v in vals))
    if channels is None:
        order = sorted(names)
    else:
        inv = {v.lower(): k for k, v in names.items()}
        order = []
        for c in channels:
            if str(c).isdigit() and int(c) in names:
                order.append(int(c))
            elif str(c).lower() in inv:
                order.append(inv[str(c).lower()])
            else:
                raise DataError(f"{meta_path}: channel {c!r} not among {names}")
    img_dir, lab_dir = root / f"images{subset}", root / f"labels{subset}"
    if not img_dir.is_dir():
        hint = "; pass --subset train to use the training images" if subset == "Ts" else ""
        raise DataError(f"{img_dir}: missing images folder{hint}")
    by_case: dict[str, dict[int, Path]] = {}
    for f in sorted(img_dir.iterdir()):
        if not f.name.endswith(ending) or f.name.startswith("."):
            continue
        m = re.match(r"^(.*)_(\d{4})$", f.name[: -len(ending)])
        if not m:
            raise DataError(f"{f}: nnU-Net image names must end in _XXXX{ending} (channel id)")
        by_case.setdefault(m.group(1), {})[int(m.group(2))] = f
    cases = []
    for cid, chans in by_case.items():
        missing = [k for k in order if k not in chans]
        extra = {"channels": [names[k] for k in order], "labels": declared or None,
                 "label_names": label_names_from_json(labels), "subset": subset}
        if missing:
            msg = (f"{img_dir / f'{cid}_{missing[0]:04d}{ending}'}: missing channel "
                   f"{names.get(missing[0], missing[0])!r} of case {cid!r}")
            if not keep:
                raise DataError(msg)
            cases.append(Case(cid, [chans[k] for k in order if k in chans], None, "nnunet", "plain",
                              {**extra, "error": msg}))
            continue
        label = lab_dir / f"{cid}{ending}"
        if not label.is_file():
            if require_labels and subset == "Tr":
                raise DataError(f"{label}: missing label file of case {cid!r}")
            label = None
        cases.append(Case(cid, [chans[k] for k in order], label, "nnunet", "plain", extra))
    return cases


def _find_msd(root: Path, channels: Any, require_labels: bool, subset: str, keep: bool = False) -> list[Case]:
    """Medical Segmentation Decathlon: one (possibly 4-D) image file per case, channels last."""
    meta = read_dataset_json(root)
    names = meta.get("modality") or meta.get("channel_names") or {"0": "ch0"}
    names = {int(k): str(v) for k, v in names.items()}
    labels = meta.get("labels", {})
    label_names = label_names_from_json(labels)
    declared = sorted({0, *label_names}) if labels else None
    order = sorted(names)
    if channels is not None:
        inv = {v.lower(): k for k, v in names.items()}
        order = []
        for c in channels:
            if str(c).isdigit() and int(c) in names:
                order.append(int(c))
            elif str(c).lower() in inv:
                order.append(inv[str(c).lower()])
            else:
                raise DataError(f"{root / 'dataset.json'}: channel {c!r} not among {names}")
    img_dir, lab_dir = root / f"images{subset}", root / f"labels{subset}"
    if not img_dir.is_dir():
        hint = "; pass --subset train to use the training images" if subset == "Ts" else ""
        raise DataError(f"{img_dir}: missing images folder{hint}")
    cases = []
    for f in _visible_images(img_dir):
        cid = strip_suffix(f.name)
        label = lab_dir / f.name
        if not label.is_file():
            if require_labels and subset == "Tr":
                raise DataError(f"{label}: missing label file of case {cid!r}")
            label = None
        extra = {"channels": [names[k] for k in order], "labels": declared, "label_names": label_names,
                 "channel_index": order, "n_channels": len(names), "subset": subset}
        cases.append(Case(cid, [f], label, "msd", "plain", extra))
    return cases


def _find_images(root: Path, require_labels: bool, keep: bool = False) -> list[Case]:
    """A plain folder of images: one case per file, or per ``<case>_XXXX`` group of channel files."""
    if require_labels:
        raise DataError(f"{root}: a plain folder of images has no labels (use an nnU-Net/MSD dataset, "
                        f"images/ + masks/ or a manifest for training)")
    files = _visible_images(root)
    grouped = bool(files) and all(re.search(r"_\d{4}$", strip_suffix(f.name)) for f in files)
    if not grouped:
        return [Case(strip_suffix(f.name), [f], None, "images", "plain", {"channels": ["image"]}) for f in files]
    by_case: dict[str, dict[int, Path]] = {}
    for f in files:
        stem = strip_suffix(f.name)
        by_case.setdefault(stem[:-5], {})[int(stem[-4:])] = f
    n = max(len(ch) for ch in by_case.values())
    cases = []
    for cid, chans in by_case.items():
        missing = [k for k in range(n) if k not in chans]
        extra: dict[str, Any] = {"channels": [f"ch{k}" for k in range(n)]}
        if missing:
            msg = f"{root / f'{cid}_{missing[0]:04d}'}*: missing channel {missing[0]} of case {cid!r}"
            if not keep:
                raise DataError(msg)
            extra["error"] = msg
        cases.append(Case(cid, [chans[k] for k in sorted(chans)], None, "images", "plain", extra))
    return cases


def _mask_key(stem: str, image_ids: set[str]) -> str:
    if stem in image_ids:
        return stem
    low = stem.lower()
    for s in _MASK_SUFFIXES:
        if low.endswith(s) and stem[: -len(s)] in image_ids:
            return stem[: -len(s)]
    return stem


def _find_paired(root: Path, layout: str, require_labels: bool, phase: str | None) -> list[Case]:
    base = root / phase if phase else (root if (root / "images").is_dir() else root / "train")
    img_dir = base / "images"
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: missing images folder ({layout} layout: <root>/<phase>/images and masks)")
    mask_dir = next((base / n for n in ("masks", "labels", "segs") if (base / n).is_dir()), base / "masks")
    images = {strip_suffix(f.name): f for f in sorted(img_dir.iterdir()) if is_image_file(f)}
    masks: dict[str, Path] = {}
    if mask_dir.is_dir():
        for f in sorted(mask_dir.iterdir()):
            if is_image_file(f):
                key = _mask_key(strip_suffix(f.name), set(images))
                if key not in images:
                    raise DataError(f"{f}: mask has no matching image in {img_dir}")
                masks[key] = f
    cases = []
    for cid, f in images.items():
        lab = masks.get(cid)
        if lab is None and require_labels:
            raise DataError(f"{f}: missing mask for case {cid!r} in {mask_dir}")
        cases.append(Case(cid, [f], lab, layout, "plain", {"channels": ["image"]}))
    return cases


def _find_manifest(root: Path, require_labels: bool) -> list[Case]:
    if root.is_dir():
        found = [root / n for n in MANIFEST_NAMES if (root / n).is_file()]
        if not found:
            raise DataError(f"{root}: no manifest ({', '.join(MANIFEST_NAMES)})")
        root = found[0]
    base = root.parent
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    try:
        if root.suffix.lower() == ".json":
            data = json.loads(root.read_text())
            if isinstance(data, dict):
                meta = {k: v for k, v in data.items() if k != "cases"}
                data = data.get("cases", [])
            rows = list(data)
        else:
            with open(root, newline="") as fh:
                rows = list(csv.DictReader(fh))
    except (OSError, json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{root}: unreadable manifest ({exc})") from exc
    cases = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise DataError(f"{root}: entry {i} is not an object")
        imgs = r.get("images", r.get("image"))
        if imgs is None:
            keys = sorted((k for k in r if re.fullmatch(r"image_?\d+", str(k))),
                          key=lambda k: int(re.sub(r"\D", "", k)))
            imgs = [r[k] for k in keys]
        if isinstance(imgs, str):
            imgs = [s for s in imgs.split(";") if s.strip()]
        if not imgs:
            raise DataError(f"{root}: entry {i} has no image path (columns image, image_0.. or images)")
        paths = [(base / str(p).strip()) for p in imgs]  # relative to the manifest's folder
        for p, given in zip(paths, imgs):
            if not p.is_file():
                raise DataError(f"{p.resolve()}: image listed in {root} (entry {i}: {str(given).strip()!r}) "
                                f"not found")
        lab = r.get("label") or None
        lab_path = base / str(lab).strip() if lab else None
        if lab_path is not None and not lab_path.is_file():
            raise DataError(f"{lab_path.resolve()}: label listed in {root} (entry {i}: {str(lab).strip()!r}) "
                            f"not found")
        if lab_path is None and require_labels:
            raise DataError(f"{root}: entry {i} ({paths[0].name}) has no label")
        cid = str(r.get("case_id") or strip_suffix(paths[0].name))
        extra = {"channels": list(meta.get("channels", [f"ch{j}" for j in range(len(paths))]))}
        if meta.get("labels") is not None:
            extra["labels"] = [int(v) for v in meta["labels"]]
        cases.append(Case(cid, paths, lab_path, "folder", str(meta.get("label_convention", "plain")), extra))
    return cases


# ------------------------------------------------------------------------------------------ loading
def declared_label_set(case: Case) -> tuple[int, ...] | None:
    """Label values allowed for ``case`` (None = any non-negative integer)."""
    if case.label_convention.startswith("brats"):
        return declared_labels(case.label_convention)
    labels = case.extra.get("labels")
    return tuple(int(v) for v in labels) if labels else None


def _same_geometry(a: np.ndarray, b: np.ndarray, tol: float = 1e-3) -> bool:
    return bool(np.allclose(a, b, atol=tol, rtol=1e-4))


def check_case_geometry(case: Case) -> tuple[tuple[int, ...], np.ndarray]:
    """Header-only check that every file of ``case`` has the same shape and affine; returns them."""
    ref_shape, ref_aff, _ = load_header(case.image_paths[0])
    for p in case.files[1:]:
        shape, aff, _ = load_header(p)
        if tuple(shape[:3]) != tuple(ref_shape[:3]):
            raise DataError(f"{p}: shape {tuple(shape)} differs from {case.image_paths[0].name} {tuple(ref_shape)}")
        if not _same_geometry(aff, ref_aff):
            raise DataError(f"{p}: affine differs from {case.image_paths[0].name} "
                            f"(max difference {np.abs(aff - ref_aff).max():.3g})")
    return tuple(ref_shape), ref_aff


def load_case(case: Case, check: bool = True) -> dict[str, Any]:
    """Read a case: ``dict(image, label, affine, header, case_id, spacing)``.

    ``image``: float32 (C, *spatial) in channel order (nibabel array order); ``label``:
    integer array (*spatial) as stored (int16/uint8; convert with :mod:`attnseg.data.labels`)
    or ``None``; ``affine``: 4×4 of the first channel; ``header``: its nibabel header (None for
    SimpleITK formats); ``spacing``: voxel sizes in mm.

    With ``check`` (default), raises :class:`DataError` naming the file for a shape or affine
    mismatch, NaN/inf voxels, a non-integer label map or label values outside the declared set.
    """
    chans = []
    affine = header = None
    ref_shape = None
    if case.extra.get("error"):
        raise DataError(case.extra["error"])
    for p in case.image_paths:
        arr, aff, hdr = load_image(p, np.float32)
        if arr.ndim == 4 and arr.shape[3] == 1:
            arr = arr[..., 0]
        if arr.ndim == 4 and len(case.image_paths) == 1:
            # one file with every channel on the 4th axis (MSD, 4-D NIfTI): (x, y, z, C) -> C files
            idx = case.extra.get("channel_index")
            if idx is not None and max(idx) >= arr.shape[3]:
                raise DataError(f"{p}: {arr.shape[3]} channel(s) on the 4th axis, dataset.json declares "
                                f"{case.extra.get('n_channels')}")
            parts = [arr[..., k] for k in (idx if idx is not None else range(arr.shape[3]))]
            affine, header, ref_shape = aff, hdr, parts[0].shape
            if check and not np.isfinite(arr).all():
                raise DataError(f"{p}: {int((~np.isfinite(arr)).sum())} NaN/inf voxel(s)")
            chans.extend(np.ascontiguousarray(a) for a in parts)
            continue
        if affine is None:
            affine, header, ref_shape = aff, hdr, arr.shape
        elif check:
            if arr.shape != ref_shape:
                raise DataError(f"{p}: shape {arr.shape} differs from {case.image_paths[0].name} {ref_shape}")
            if not _same_geometry(aff, affine):
                raise DataError(f"{p}: affine differs from {case.image_paths[0].name} "
                                f"(max difference {np.abs(aff - affine).max():.3g})")
        if check and not np.isfinite(arr).all():
            n = int((~np.isfinite(arr)).sum())
            raise DataError(f"{p}: {n} NaN/inf voxel(s)")
        chans.append(arr)
    image = np.stack(chans) if len(chans) > 1 else chans[0][None]
    ref_shape = image.shape[1:]
    label = None
    if case.label_path is not None:
        lab, laff, _ = load_image(case.label_path)
        if lab.ndim == 4 and lab.shape[3] == 1:
            lab = lab[..., 0]
        if check:
            if lab.shape != ref_shape:
                raise DataError(f"{case.label_path}: label shape {lab.shape} differs from image shape {ref_shape}")
            if not _same_geometry(laff, affine):
                raise DataError(f"{case.label_path}: label affine differs from image affine "
                                f"(max difference {np.abs(laff - affine).max():.3g})")
        if lab.dtype.kind == "f":
            if check and (not np.isfinite(lab).all() or np.any(lab != np.round(lab))):
                raise DataError(f"{case.label_path}: label map has NaN/inf or non-integer values")
            lab = np.rint(lab).astype(np.int16)
        if check:
            present = np.unique(lab)
            declared = declared_label_set(case)
            bad = sorted(set(present.tolist()) - set(declared)) if declared else sorted(v for v in present.tolist()
                                                                                       if v < 0)
            if bad:
                allowed = f"declared set {set(declared)}" if declared else "non-negative values"
                raise DataError(f"{case.label_path}: label values {bad} not in {allowed}"
                                + (f" ({case.label_convention})" if case.label_convention != "plain" else ""))
        label = lab
    return {"image": image, "label": label, "affine": affine, "header": header, "case_id": case.case_id,
            "spacing": spacing_from_affine(affine)}


def validate_cases(cases: list[Case], full: bool = True) -> list[dict[str, Any]]:
    """Run every check on every case; returns one summary row per case.

    Each row: case_id, shape, spacing, channels, labels (value → voxel count) and ``error``
    (message or None). ``full=False`` only checks headers (shape/affine), not voxels.
    """
    rows = []
    for c in cases:
        row: dict[str, Any] = {"case_id": c.case_id, "layout": c.layout, "convention": c.label_convention,
                               "channels": len(c.image_paths), "error": None}
        try:
            if full:
                d = load_case(c)
                row["shape"] = "×".join(str(s) for s in d["image"].shape[1:])
                row["spacing"] = "×".join(f"{s:.3g}" for s in d["spacing"])
                if d["label"] is not None:
                    vals, counts = np.unique(d["label"], return_counts=True)
                    row["labels"] = " ".join(f"{int(v)}:{int(n)}" for v, n in zip(vals, counts))
            else:
                shape, aff = check_case_geometry(c)
                row["shape"] = "×".join(str(s) for s in shape[:3])
                row["spacing"] = "×".join(f"{s:.3g}" for s in spacing_from_affine(aff))
        except DataError as exc:
            row["error"] = str(exc)
        rows.append(row)
    return rows
