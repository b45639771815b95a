"""Interactive case viewer (NiiVue) for the report and ``attnseg view``.

Every evaluated case gets its volumes prepared for NiiVue, a WebGL2 NIfTI viewer
(npm ``@niivue/niivue``, BSD-2-Clause, vendored in ``static/`` at :data:`NIIVUE_VERSION`):
all image channels, the ground truth and the prediction as label maps, and an error map
(false positive / false negative / wrong label). In the report the volumes are embedded
compactly: cropped to the foreground, image intensities quantised to 8 bits (the NIfTI
``scl_slope``/``scl_inter`` keep the read-out in the image's units), gzip + base64, and
downsampled by an integer stride when a case would exceed :data:`CASE_BUDGET_BYTES`.
``attnseg view`` serves the same page over HTTP with cropped but unquantised, full-resolution
volumes (:mod:`attnseg.report.viewer_server`).

Labels: BraTS label maps (0/1/2/4 or 0/1/2/3) are shown as classes NCR/NET (red), ED (green),
ET (yellow), the colours of TC, WT and ET in the rest of the report; other tasks show their
label values, named from ``dataset.json`` when it has names.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nibabel as nib
import numpy as np

from attnseg.data.io import load_image
from attnseg.data.labels import brats_to_classes
from attnseg.data.readers import find_cases
from attnseg.models.checkpoint import build_model_from_checkpoint
from attnseg.report.overlays import find_prediction, lesion_centre
from attnseg.report.slice_weights import case_slice_weights, slice_attention_sites

NIIVUE_VERSION = "0.69.0"
# sha256 of static/niivue.umd.js (npm @niivue/niivue 0.69.0, dist/niivue.umd.js, unmodified)
NIIVUE_SHA256 = "47b896b77ec4a5be3ef1949c33ad393b6f45629921f326c279000bcf51bdb4af"
STATIC_DIR = Path(__file__).parent / "static"
# embedded bytes (base64 text) allowed per case in the report; larger cases are downsampled
CASE_BUDGET_BYTES = 1_500_000
# the report embeds at most this many cases (best first); `attnseg view` shows any number
MAX_EMBEDDED_CASES = 60
CROP_MARGIN = 2  # voxels kept around the foreground box

BRATS_CLASS_NAMES = ("NCR/NET", "ED", "ET")  # classes 1, 2, 3
# NCR/NET is in TC (red), ED only in WT (green), ET yellow: the report's region colours
BRATS_CLASS_COLOURS = ("#d62728", "#2ca02c", "#e6b800")
PLAIN_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
                 "#2ca02c", "#d62728")
ERROR_NAMES = ("false positive", "false negative", "wrong label")
ERROR_COLOURS = ("#ff00ff", "#00bfff", "#ff8c00")


def niivue_js() -> str:
    """The vendored NiiVue bundle (UMD: defines the global ``niivue``); checked against its pin."""
    return _niivue_js()


@lru_cache(maxsize=1)
def _niivue_js() -> str:
    path = STATIC_DIR / "niivue.umd.js"
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != NIIVUE_SHA256:
        raise ValueError(f"{path}: not the pinned NiiVue {NIIVUE_VERSION} build (sha256 differs)")
    return data.decode("utf-8")


def _static_text(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


# ------------------------------------------------------------------------------- volume encoding
def nifti_bytes(data: np.ndarray, affine: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> bytes:
    """Uncompressed single-file NIfTI-1 of a 3-D array (header + voxels, x fastest).

    ``slope``/``inter`` go to ``scl_slope``/``scl_inter`` (value = stored × slope + inter), so a
    quantised image still reads out in its own units.
    """
    arr = np.asarray(data)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(arr.dtype)
    hdr.set_data_shape(arr.shape)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm")
    hdr["scl_slope"] = slope
    hdr["scl_inter"] = inter
    hdr.set_data_offset(352)
    return hdr.binaryblock + b"\x00" * 4 + np.asfortranarray(arr).tobytes(order="F")


def quantise(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """8-bit copy of ``image``: ``(uint8, slope, inter)`` with value ≈ q × slope + inter.

    The range runs from min(0, 0.5th percentile) to the 99.9th percentile of the non-zero
    voxels (brighter voxels are clipped), so a zero background stays exactly zero.
    """
    img = np.asarray(image, dtype=np.float32)
    nz = img[img != 0]
    if nz.size == 0:
        return np.zeros(img.shape, np.uint8), 1.0, 0.0
    lo = min(0.0, float(np.percentile(img, 0.5)))
    hi = float(np.percentile(nz, 99.9))
    if not hi > lo:
        hi = lo + 1.0
    slope = (hi - lo) / 255.0
    q = np.rint((np.clip(img, lo, hi) - lo) / slope)
    return q.astype(np.uint8), slope, lo


def foreground_box(arrays: Sequence[np.ndarray], margin: int = CROP_MARGIN) -> tuple[slice, slice, slice]:
    """Bounding box (with ``margin`` voxels) of the voxels that are non-zero in any array."""
    shape = arrays[0].shape[:3]
    fg = np.zeros(shape, bool)
    for a in arrays:
        fg |= np.asarray(a) != 0
    if not fg.any():
        return slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2])
    idx = np.argwhere(fg)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return tuple(slice(max(int(a) - margin, 0), min(int(b) + margin, s))  # type: ignore[return-value]
                 for a, b, s in zip(lo, hi, shape))


def crop_affine(affine: np.ndarray, box: Sequence[slice], stride: int = 1) -> np.ndarray:
    """Affine of ``array[box][::stride, ::stride, ::stride]`` given the affine of ``array``."""
    a = np.asarray(affine, dtype=np.float64).copy()
    start = np.array([s.start or 0 for s in box], dtype=np.float64)
    a[:3, 3] = a[:3, :3] @ start + a[:3, 3]
    a[:3, :3] = a[:3, :3] * stride
    return a


def error_map(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Voxel-wise errors as uint8: 1 false positive (predicted label where the reference is
    background), 2 false negative (reference label predicted as background), 3 wrong label."""
    ref, pred = np.asarray(reference), np.asarray(prediction)
    out = np.zeros(ref.shape, np.uint8)
    out[(pred > 0) & (ref == 0)] = 1
    out[(ref > 0) & (pred == 0)] = 2
    out[(ref > 0) & (pred > 0) & (ref != pred)] = 3
    return out


# ------------------------------------------------------------------------------- cases
@dataclass
class LabelTable:
    """Values, names and colours of a label map as NiiVue shows them (background left out)."""

    values: list[int]
    names: list[str]
    colours: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"values": self.values, "names": self.names, "colours": self.colours}


def _brats_classes(label: np.ndarray, convention: str) -> np.ndarray:
    """BraTS label map → classes 0..3; a map in the other release's values is read too."""
    err: Exception | None = None
    for conv in dict.fromkeys([convention, "brats2020", "brats2023"]):
        try:
            return brats_to_classes(label, conv)
        except ValueError as exc:
            err = exc
    raise ValueError(f"label values {sorted(np.unique(label).tolist())} fit no BraTS convention ({err})")


@dataclass
class CaseVolumes:
    """One case cropped (and possibly quantised/downsampled), ready to encode for NiiVue."""

    case_id: str
    channels: list[str]
    images: list[np.ndarray]
    scales: list[tuple[float, float]]  # (slope, inter) per image
    reference: np.ndarray | None
    prediction: np.ndarray | None
    affine: np.ndarray
    labels: LabelTable
    stride: int = 1
    full_shape: tuple[int, ...] = ()
    origin: tuple[int, ...] = (0, 0, 0)  # full-resolution voxel of this grid's voxel (0, 0, 0)
    notes: list[str] = field(default_factory=list)

    def centre(self) -> list[int]:
        """Voxel (in this cropped grid) where the viewer opens: inside the ground truth's lesion,
        nearest to its centre of mass (else the prediction's; else the grid centre)."""
        masks = [a > 0 for a in (self.reference, self.prediction) if a is not None]
        return [int(v) for v in lesion_centre(masks, self.images[0].shape)]

    def strided(self, stride: int) -> CaseVolumes:
        """Every ``stride``-th voxel along each axis (nearest-neighbour downsampling, labels stay
        labels); ``stride`` counts from this grid, which must itself be full resolution."""
        if stride == 1:
            return self
        if self.stride != 1:
            raise ValueError("strided() works from the full-resolution grid")
        sel = (slice(None, None, stride),) * 3
        a = self.affine.copy()
        a[:3, :3] *= stride
        return CaseVolumes(self.case_id, self.channels, [im[sel] for im in self.images], self.scales,
                           None if self.reference is None else self.reference[sel],
                           None if self.prediction is None else self.prediction[sel],
                           a, self.labels, stride, self.full_shape, self.origin, list(self.notes))

    @property
    def errors(self) -> np.ndarray | None:
        if self.reference is None or self.prediction is None:
            return None
        return error_map(self.reference, self.prediction)

    def volumes(self) -> list[tuple[str, str, bytes]]:
        """``(key, name, uncompressed NIfTI)`` for every volume: ``ch<i>``, ``gt``, ``pred``, ``err``."""
        out = [(f"ch{i}", name, nifti_bytes(img, self.affine, *sc))
               for i, (name, img, sc) in enumerate(zip(self.channels, self.images, self.scales))]
        for key, name, arr in (("gt", "ground truth", self.reference), ("pred", "prediction", self.prediction),
                               ("err", "errors", self.errors)):
            if arr is not None:
                out.append((key, name, nifti_bytes(arr.astype(np.uint8), self.affine)))
        return out


def load_case_volumes(case: Any, pred_path: Path | None, *, quantised: bool = True, stride: int = 1,
                      label_names: dict[int, str] | None = None) -> CaseVolumes:
    """Read every channel, the ground truth and the prediction of a data-layer ``Case``, crop
    them to the foreground, and (``quantised``) turn the images into 8 bits.

    Raises ``ValueError`` naming the file when the prediction's or ground truth's shape differs
    from the image's.
    """
    images: list[np.ndarray] = []
    affine = None
    for path in case.image_paths:
        img, aff, _ = load_image(path, np.float32)
        # a 4-D file holds several channels (MSD style)
        images += [np.asarray(img[..., c]) for c in range(img.shape[3])] if img.ndim == 4 else [np.asarray(img)]
        if affine is None:
            affine = aff
    images = [im[..., None] if im.ndim == 2 else im for im in images]  # 2-D images: one slice
    given = list(case.channels)
    names = given if len(given) == len(images) else [f"ch{i}" for i in range(len(images))]
    shape = images[0].shape

    def label_of(path: Path | None, what: str) -> np.ndarray | None:
        if path is None:
            return None
        arr, _, _ = load_image(path)
        arr = np.asarray(arr).reshape(shape) if np.asarray(arr).size == int(np.prod(shape)) else np.asarray(arr)
        if arr.shape != shape:
            raise ValueError(f"{path}: {what} shape {arr.shape} differs from the image's {shape} "
                             f"({case.image_paths[0]})")
        return np.rint(arr).astype(np.int32)

    ref = label_of(case.label_path, "ground-truth")
    pred = label_of(pred_path, "prediction")
    conv = str(getattr(case, "label_convention", "plain"))
    if conv.startswith("brats"):
        ref = _brats_classes(ref, conv) if ref is not None else None
        pred = _brats_classes(pred, conv) if pred is not None else None
        table = LabelTable([1, 2, 3], list(BRATS_CLASS_NAMES), list(BRATS_CLASS_COLOURS))
    else:
        found: set[int] = set()
        for a in (ref, pred):
            if a is not None:
                found |= {int(v) for v in np.unique(a) if v != 0}
        names_of = dict(label_names or case.extra.get("label_names") or {})
        values = sorted(found | {int(v) for v in names_of})
        if values and (values[0] < 0 or values[-1] > 255):
            raise ValueError(f"{case.label_path or pred_path}: label values {values[0]}..{values[-1]} do not "
                             "fit the viewer's 8-bit label maps")
        table = LabelTable(values, [names_of.get(v, str(v)) for v in values],
                           [PLAIN_COLOURS[i % len(PLAIN_COLOURS)] for i in range(len(values))])
    box = foreground_box([*images, *(a for a in (ref, pred) if a is not None)])
    sel = tuple(slice(b.start, b.stop, stride) for b in box)
    cropped = [im[sel] for im in images]
    if quantised:
        qs = [quantise(im) for im in cropped]
        cropped = [q for q, _, _ in qs]
        scales = [(s, i) for _, s, i in qs]
    else:
        scales = [(1.0, 0.0)] * len(cropped)
    return CaseVolumes(
        case_id=case.case_id, channels=names, images=cropped, scales=scales,
        reference=ref[sel].astype(np.uint8) if ref is not None else None,
        prediction=pred[sel].astype(np.uint8) if pred is not None else None,
        affine=crop_affine(affine, box, stride), labels=table, stride=stride, full_shape=tuple(shape),
        origin=tuple(int(b.start) for b in box))


def encode_payload(cv: CaseVolumes, level: int = 6) -> dict[str, Any]:
    """JSON-able description of a case with every volume as base64 of its gzipped NIfTI."""
    vols = [{"key": k, "name": n, "b64": base64.b64encode(gzip.compress(b, level, mtime=0)).decode("ascii")}
            for k, n, b in cv.volumes()]
    return _payload(cv, vols)


def _payload(cv: CaseVolumes, vols: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": cv.case_id, "channels": cv.channels, "volumes": vols, "labels": cv.labels.as_json(),
            "errors": {"values": [1, 2, 3], "names": list(ERROR_NAMES), "colours": list(ERROR_COLOURS)},
            "dims": [int(s) for s in cv.images[0].shape], "full_dims": [int(s) for s in cv.full_shape],
            "stride": cv.stride, "quantised": bool(cv.images[0].dtype == np.uint8), "centre": cv.centre(),
            "centre_mm": [float(v) for v in (cv.affine @ [*cv.centre(), 1.0])[:3]],
            "origin": [int(v) for v in cv.origin],
            # world (mm) -> voxel of this grid: the read-out names voxels of the case's own files
            "world_to_voxel": np.linalg.inv(cv.affine).round(9).tolist(),
            # slice-weight profile of models with slice attention (see slice_profile()), drawn next to
            # the planes: {"axis": int, "weights": [float], "slices": [case slice numbers], "label": str}
            "slice_profile": None}


def payload_size(payload: dict[str, Any]) -> int:
    return sum(len(v.get("b64", "")) for v in payload["volumes"])


def embedded_payload(case: Any, pred_path: Path | None, budget: int = CASE_BUDGET_BYTES,
                     label_names: dict[int, str] | None = None) -> dict[str, Any]:
    """Payload of a case within ``budget`` bytes of base64: quantised, cropped, and downsampled
    by the smallest integer stride (1, 2, 3, ...) that fits (``stride`` says which was used)."""
    full = load_case_volumes(case, pred_path, quantised=True, label_names=label_names)
    # first guess from one channel (the label maps compress far better than the images): a case
    # clearly over budget skips the full-resolution encoding
    one = len(gzip.compress(nifti_bytes(full.images[0], full.affine), 6, mtime=0)) * 4 / 3
    estimate = one * (len(full.images) + 0.5)
    stride = int(math.ceil((estimate / budget) ** (1 / 3))) if estimate > 1.25 * budget else 1
    while True:
        cv = full.strided(stride)
        payload = encode_payload(cv)
        size = payload_size(payload)
        if size <= budget or min(cv.images[0].shape) <= 8:
            return payload
        # bytes scale ~ with the voxel count: jump straight to a stride that should fit
        stride = max(stride + 1, int(math.ceil(stride * (size / budget) ** (1 / 3))))


def has_slice_attention(checkpoint: Path | None) -> bool:
    """Whether the checkpoint's model has slice attention (PAM, slice): its profile goes next to the viewer."""
    if checkpoint is None:
        return False

    model, _ = build_model_from_checkpoint(checkpoint)
    return bool(slice_attention_sites(model))


def slice_profile(checkpoint: Path, case: Any) -> dict[str, Any]:
    """The slice-weight profile of the model's finest slice-attention level on ``case`` (see
    :mod:`attnseg.report.slice_weights`), with slice positions as the case's own slice numbers."""
    folder = Path(case.image_paths[0]).parent
    res = case_slice_weights(checkpoint, folder if folder.name == case.case_id else case.image_paths[0])
    if not res.profiles:
        raise ValueError(f"{checkpoint}: no slice-attention profile on {case.case_id}")
    p = max(res.profiles, key=lambda q: len(q.weights))
    return {"axis": int(res.slice_axis), "weights": [float(v) for v in p.weights],
            "slices": [float(res.offset + v) for v in p.positions],
            "label": f"slice weights along axis {res.slice_axis} ({p.name}, {len(p.weights)} slices)",
            "notes": list(res.notes)}


# ------------------------------------------------------------------------------- page
def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _json_script(obj: Any) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


@dataclass
class CaseRow:
    """A row of the Cases table: case id, display cells, numeric sort keys, tag (best/median/worst)."""

    case_id: str
    cells: list[str]
    sort_keys: list[float | str | None]
    tag: str = ""


@dataclass
class CasesSection:
    """The report's "Cases" section: sortable per-case table + the NiiVue viewer.

    ``payloads`` maps a row index to an embedded payload (report) — or ``data_base`` names where the
    page fetches ``case_NNN.js`` files from (the report's ``viewer/`` folder, or the server).
    """

    header: list[str]
    rows: list[CaseRow]
    payloads: dict[int, dict[str, Any]] = field(default_factory=dict)
    data_base: str = "viewer/"
    niivue_src: str = "viewer/niivue.umd.js"
    notes: list[str] = field(default_factory=list)
    viewable: set[int] | None = None  # rows the viewer can open (default: those with a payload)

    def can_view(self, i: int) -> bool:
        return i in (self.viewable if self.viewable is not None else self.payloads)

    # ---- files next to index.html
    def write_files(self, folder: Path) -> list[Path]:
        """``niivue.umd.js``, its licence and one ``case_NNN.js`` per embedded case into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in (("niivue.umd.js", niivue_js()), ("NIIVUE_LICENSE.txt", _static_text("NIIVUE_LICENSE.txt"))):
            p = folder / name
            p.write_text(text, encoding="utf-8")
            written.append(p)
        for n, payload in self.payloads.items():
            p = folder / f"case_{n:03d}.js"
            p.write_text(case_script(n, payload), encoding="utf-8")
            written.append(p)
        return written

    def config(self) -> dict[str, Any]:
        return {"niivue": NIIVUE_VERSION, "base": self.data_base,
                "cases": [{"n": i, "id": r.case_id, "available": self.can_view(i),
                           "tag": r.tag, "cells": dict(zip(self.header, r.cells))} for i, r in enumerate(self.rows)]}

    def table_html(self) -> str:
        out = ['<div class="cases-table-wrap"><table class="sortable" id="cases-table"><thead><tr>']
        for j, h in enumerate(self.header):
            out.append(f'<th data-col="{j}" title="click to sort">{_esc(h)}</th>')
        out.append("</tr></thead><tbody>")
        for i, r in enumerate(self.rows):
            cls = ' class="pick"' if r.tag else ""
            out.append(f'<tr id="case-row-{i}" data-n="{i}"{cls}>')
            for j, (c, k) in enumerate(zip(r.cells, r.sort_keys)):
                key = "" if k is None or (isinstance(k, float) and not math.isfinite(k)) else k
                if j == 1 and self.can_view(i):
                    c_html = f'<a href="#case={_esc(quote(r.case_id, safe=""))}" class="view-link">{_esc(c)}</a>'
                else:
                    c_html = _esc(c)
                out.append(f'<td data-sort="{_esc(key)}">{c_html}</td>')
            out.append("</tr>")
        out.append("</tbody></table></div>")
        return "".join(out)

    def html(self, embed: bool) -> str:
        """Section body. ``embed``: NiiVue and every case inline (one self-contained file);
        else scripts are loaded from ``niivue_src`` and ``data_base`` (files next to the page)."""
        parts = [f'<p class="help">Click a case (or a column title to sort by it) to open it in the viewer. '
                 f'Keys: <kbd>j</kbd>/<kbd>k</kbd> next/previous case (table order), <kbd>m</kbd> next '
                 f'modality, <kbd>g</kbd>/<kbd>p</kbd>/<kbd>e</kbd> show/hide ground truth, prediction, '
                 f'errors. Viewer: NiiVue {NIIVUE_VERSION} (BSD-2-Clause), bundled; no network access.</p>',
                 self.table_html()]
        parts += [f'<div class="note">{_esc(n)}</div>' for n in self.notes]
        parts.append(_VIEWER_MARKUP)
        parts.append('<noscript><div class="note">The interactive viewer needs JavaScript; the table above and '
                     'the static figures work without it.</div></noscript>')
        parts.append(f"<style>{_static_text('viewer.css')}</style>")
        parts.append(f'<script type="application/json" id="attnseg-viewer-config">{_json_script(self.config())}'
                     "</script>")
        if embed:
            for n, payload in self.payloads.items():
                parts.append(f'<script type="application/json" id="attnseg-case-{n}">{_json_script(payload)}'
                             "</script>")
            parts.append(f"<script>{niivue_js()}</script>")
        else:
            parts.append(f'<script src="{_esc(self.niivue_src)}"></script>')
        parts.append(f"<script>{_static_text('viewer.js')}</script>")
        return "\n".join(parts)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r.cells) + " |" for r in self.rows]
        return ("The interactive viewer (NiiVue) is in index.html / report_standalone.html.\n\n"
                + "\n".join(lines) + "\n")


def case_script(n: int, payload: dict[str, Any]) -> str:
    """``case_NNN.js``: hands case ``n`` to the page (a script file loads from file:// where fetch cannot)."""
    return f"window.attnsegCaseData({n},{_json_script(payload)});\n"


_VIEWER_MARKUP = """
<div id="attnseg-viewer" class="viewer" hidden>
  <div class="viewer-head">
    <button type="button" id="v-prev" title="previous case (k)">&#9664;</button>
    <strong id="v-title">–</strong>
    <button type="button" id="v-next" title="next case (j)">&#9654;</button>
    <a id="v-back" href="#cases-table">&#8593; metrics</a>
    <span id="v-scores" class="v-scores"></span>
  </div>
  <div class="viewer-body">
    <div class="viewer-canvas"><canvas id="attnseg-canvas" width="900" height="700"></canvas></div>
    <div class="viewer-side">
      <label>Image <select id="v-channel"></select></label>
      <div class="v-layer"><label><input type="checkbox" id="v-gt-on"> ground truth</label>
        <input type="range" id="v-gt" min="0" max="1" step="0.05" value="0.5"></div>
      <div class="v-layer"><label><input type="checkbox" id="v-pred-on" checked> prediction</label>
        <input type="range" id="v-pred" min="0" max="1" step="0.05" value="0.5"></div>
      <div class="v-layer"><label><input type="checkbox" id="v-err-on"> errors (FP/FN)</label>
        <input type="range" id="v-err" min="0" max="1" step="0.05" value="0.8"></div>
      <div id="v-legend" class="v-legend"></div>
      <div id="v-readout" class="v-readout">click the image to read intensity and labels</div>
      <div id="v-info" class="v-info"></div>
      <div id="v-profile" class="v-profile" hidden><div>slice-attention weights</div><canvas width="240"
        height="90"></canvas></div>
    </div>
  </div>
</div>
"""


def case_table(ev: Any | None, case_ids: Sequence[str] = (),
               picks: dict[str, tuple[str, float]] | None = None) -> tuple[list[str], list[CaseRow]]:
    """Header and rows of the Cases table: evaluated cases best first (Dice and HD95 per
    region/class, mean, best/median/worst tag), then ``case_ids`` that have no scores."""
    picks = picks or {}
    if ev is None or not ev.metrics:
        header, rows = ["#", "Case"], []
        ranked: list[tuple[str, float]] = []
        metrics: list[str] = []
    else:
        metrics = [m for m in ("dice", "hd95") if m in ev.metrics] or ev.metrics[:1]
        names = {"dice": "Dice", "hd95": "HD95"}
        header = ["#", "Case"] + [f"{names.get(m, m)} {label}" for m in metrics for label in ev.labels]
        header += ["mean Dice" if "dice" in metrics else f"mean {metrics[0]}", "overlay"]
        ranked = ev.ranked_cases(metrics[0])
    tags = {cid: tag for tag, (cid, _) in picks.items()}
    rows = []
    for i, (cid, mean) in enumerate(ranked, 1):
        cells: list[str] = [str(i), cid]
        keys: list[float | str | None] = [float(i), cid]
        for m in metrics:
            sc = ev.case_scores(cid, m)
            for label in ev.labels:
                v = sc.get(label)
                cells.append(_fmt(v))
                keys.append(v)
        cells += [_fmt(mean), tags.get(cid, "")]
        keys += [mean, tags.get(cid, "")]
        rows.append(CaseRow(cid, cells, keys, tags.get(cid, "")))
    seen = {r.case_id for r in rows}
    for cid in case_ids:
        if cid not in seen:
            seen.add(cid)
            n = len(rows) + 1
            extra = ["–"] * (len(header) - 2)
            rows.append(CaseRow(cid, [str(n), cid, *extra], [float(n), cid, *([None] * len(extra))]))
    return header, rows


def match_cases(data_dir: Path | None, pred_dir: Path | None, case_ids: Sequence[str]) -> tuple[
        dict[str, tuple[Any, Path]], list[str]]:
    """``{case_id: (data-layer Case, prediction path)}`` for ``case_ids`` found in both folders, and
    notes for what is missing (a whole folder, or single cases)."""
    if pred_dir is None or not Path(pred_dir).is_dir():
        return {}, ["viewer left out: no prediction folder" if pred_dir is None
                    else f"viewer left out: prediction folder {pred_dir} not found"]
    if data_dir is None or not Path(data_dir).exists():
        return {}, ["viewer left out: no dataset folder with the images and ground truth (pass --data)"
                    if data_dir is None else f"viewer left out: dataset folder {data_dir} not found"]

    try:
        cases = {c.case_id: c for c in find_cases(data_dir, require_labels=False)}
    except ValueError as exc:
        return {}, [f"viewer left out: {exc}"]
    found, missing = {}, []
    for cid in case_ids:
        case, pred = cases.get(cid), find_prediction(Path(pred_dir), cid)
        if case is None or pred is None:
            missing.append(f"{cid} ({'not in the dataset' if case is None else 'no prediction'})")
        else:
            found[cid] = (case, pred)
    return found, ([f"not in the viewer: {'; '.join(missing)}"] if missing else [])


def viewer_cases_section(ev: Any, picks: dict[str, tuple[str, float]], pred_dir: Path | None,
                         data_dir: Path | None, *, embed_budget: int = CASE_BUDGET_BYTES,
                         max_cases: int = MAX_EMBEDDED_CASES, checkpoint: Path | None = None) -> CasesSection:
    """Cases section of the report: the per-case table (best first) and embedded payloads for
    up to ``max_cases`` cases; what cannot be shown is listed in ``notes``. With the run's
    ``checkpoint`` of a model with slice attention, each case also gets its slice-weight profile."""
    header, rows = case_table(ev, picks=picks)
    sec = CasesSection(header, rows)
    ids = [r.case_id for r in rows[:max_cases]]
    found, sec.notes = match_cases(data_dir, pred_dir, ids)
    if len(rows) > max_cases and found:
        sec.notes.append(f"the viewer embeds the first {max_cases} cases of the table; `attnseg view` shows "
                         f"all {len(rows)}")
    skipped = []
    for i, r in enumerate(rows[:max_cases]):
        if r.case_id not in found:
            continue
        try:
            sec.payloads[i] = embedded_payload(*found[r.case_id], budget=embed_budget)
        except ValueError as exc:
            skipped.append(f"{r.case_id} ({exc})")
    try:
        with_profiles = bool(sec.payloads) and has_slice_attention(checkpoint)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # the profile is optional
        with_profiles = False
        sec.notes.append(f"no slice-weight profiles: {checkpoint}: {exc}")
    for i, payload in sec.payloads.items() if with_profiles else ():
        try:
            payload["slice_profile"] = slice_profile(checkpoint, found[rows[i].case_id][0])
        except (OSError, ValueError, RuntimeError) as exc:
            sec.notes.append(f"no slice-weight profile for {rows[i].case_id}: {exc}")
    if skipped:
        sec.notes.append("not in the viewer: " + "; ".join(skipped))
    return sec


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "∞" if v > 0 else "–"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    return str(v)
