"""attnseg report on a finished tiny run folder built here: pages, figures, tables, overlays."""

from __future__ import annotations

import base64
import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from attnseg.cli.main import main
from attnseg.report.html import build_report, referenced_images
from attnseg.report.overlays import lesion_centre, ras_spacing, to_ras
from attnseg.report.rundata import describe, read_eval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (20, 18, 12)
# oblique, anisotropic voxel grid: rotated about z, 1.2 × 1.0 × 2.5 mm, x axis flipped
_ROT = np.array([[math.cos(0.3), -math.sin(0.3), 0], [math.sin(0.3), math.cos(0.3), 0], [0, 0, 1]])
AFFINE = np.eye(4)
AFFINE[:3, :3] = _ROT @ np.diag([-1.2, 1.0, 2.5])
AFFINE[:3, 3] = [30.0, -10.0, 5.0]
# per-case Dice used by the tiny evaluation (WT, TC, ET); by mean: case2 best, case1 median, case0 worst
DICE = {"case0": (0.50, 0.40, 0.10), "case1": (0.80, 0.70, 0.60), "case2": (0.95, 0.90, 0.85),
        "case3": (0.85, 0.75, 0.65), "case4": (0.70, 0.60, 0.55)}


def _brats_label(shift: int) -> np.ndarray:
    """Sphere lesion: ED shell (2), NCR core (1), ET ring (4) in BraTS 2020 values."""
    g = np.indices(SHAPE).astype(np.float32)
    r = np.sqrt(((g - np.array([10 + shift, 9, 6])[:, None, None, None]) ** 2
                 * np.array([1.0, 1.0, 4.0])[:, None, None, None]).sum(0))
    lab = np.zeros(SHAPE, np.uint8)
    lab[r < 6] = 2
    lab[r < 4] = 4
    lab[r < 2.5] = 1
    return lab


def _save(arr: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    data, run, pred, ev = root / "data", root / "run", root / "pred", root / "eval"
    for d in (data, run / "checkpoints", pred, ev):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, cid in enumerate(DICE):
        cdir = data / cid
        cdir.mkdir()
        lab = _brats_label(shift=i % 2)
        for j, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            img = rng.normal(100 + 10 * j, 5, SHAPE).astype(np.float32) + 40 * (lab > 0)
            _save(img, cdir / f"{cid}_{mod}.nii.gz")
        _save(lab, cdir / f"{cid}_seg.nii.gz")
        p = lab.copy()
        p[p == 4] = 1 if i == 0 else 4  # case0 misses ET entirely
        _save(np.roll(p, 1, axis=0), pred / f"{cid}.nii.gz")
    rows = []
    for e in range(1, 7):
        r = {"epoch": e, "iteration": 10 * e, "lr": 1e-3 / e, "train_loss": 1.0 / e, "train_loss_dice": 0.6 / e,
             "train_loss_ce": 0.4 / e, "time_s": 2.0}
        if e % 2 == 0:
            r.update({"val_dice_ET": 0.1 * e, "val_dice_TC": 0.12 * e, "val_dice_WT": 0.15 * e,
                      "val_hd95_ET": 10 / e, "val_hd95_TC": 9 / e, "val_hd95_WT": 8 / e})
            r["val_dice_mean"] = (r["val_dice_ET"] + r["val_dice_TC"] + r["val_dice_WT"]) / 3
        rows.append(r)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with (run / "metrics.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    (run / "config.yaml").write_text("model:\n  name: unet\n  kwargs: {features: [4, 8]}\ntask:\n  kind: "
                                     "brats-regions\n  num_classes: 4\n  in_channels: 4\ndata:\n  root: "
                                     f"{data}\n  patch_size: [16, 16, 8]\n")
    (run / "env.json").write_text(json.dumps({"attnseg": "0.1.0", "torch": "2.x", "device": "cpu"}))
    with (ev / "per_case.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "region", "dice", "hd95", "sensitivity"])
        for cid, d in DICE.items():
            for region, v in zip(("WT", "TC", "ET"), d):
                w.writerow([cid, region, v, round(10 * (1 - v), 3), v])
    (ev / "summary.json").write_text(json.dumps({"pred": str(pred), "ref": str(data), "spacing_aware": True}))
    return {"root": root, "data": data, "run": run, "pred": pred, "eval": ev}


class _Tables(HTMLParser):
    """Collects every <table> as a list of rows of cell texts (th and td)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _assert_png(data: bytes, where: str) -> np.ndarray:
    assert data[:8] == PNG_SIGNATURE, f"{where} is not a PNG"
    import io

    img = mpimg.imread(io.BytesIO(data), format="png")
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50, f"{where}: {img.shape}"
    return img


@pytest.fixture(scope="module")
def report(tiny_run):
    return build_report(tiny_run["run"], eval_dir=tiny_run["eval"])


def test_every_referenced_image_exists_and_is_a_valid_png(report):
    text = report.html.read_text()
    srcs = referenced_images(text)
    names = {Path(s).name for s in srcs}
    assert {"training_loss.png", "validation_dice.png", "validation_hd95.png", "boxplots.png",
            "overlay_best.png", "overlay_median.png", "overlay_worst.png"} <= names
    for s in srcs:
        assert not s.startswith(("/", "data:")), "index.html references files next to it"
        _assert_png((report.out_dir / s).read_bytes(), s)
    assert sorted(p.name for p in report.figures) == sorted(names)


def test_standalone_page_embeds_the_same_images(report):
    srcs = referenced_images(report.standalone.read_text())
    assert len(srcs) == len(referenced_images(report.html.read_text()))
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        _assert_png(base64.b64decode(s.split(",", 1)[1]), "embedded image")


def test_markdown_references_existing_pngs_and_has_well_formed_tables(report):
    md = report.markdown.read_text()
    import re

    imgs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(imgs) == 7
    for s in imgs:
        _assert_png((report.out_dir / s).read_bytes(), s)
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") or line.startswith("|--"):
            ncol = lines[i - 1].count(" | ") + 1
            j = i + 1
            while j < len(lines) and lines[j].startswith("| "):
                assert lines[j].replace("\\|", "").count(" | ") + 1 == ncol, lines[j]
                j += 1


def test_metric_table_values_and_shape(report):
    p = _Tables()
    p.feed(report.html.read_text())
    for t in p.tables:  # well-formed: every row as wide as the header
        assert len({len(r) for r in t}) == 1, t
    metric = next(t for t in p.tables if t[0][0] == "Region / class" and "n" in t[0])
    by_label = {r[0]: r for r in metric[1:]}
    assert list(by_label) == ["WT", "TC", "ET", "mean of regions"]
    for k, region in enumerate(("WT", "TC", "ET")):
        vals = [d[k] for d in DICE.values()]
        mean, std = float(np.mean(vals)), float(np.std(vals))  # population std, as attnseg evaluate
        assert by_label[region][1] == "5"
        assert by_label[region][2] == f"{mean:.3f} ± {std:.3f}"
        assert by_label[region][3].startswith(f"{np.median(vals):.3f} [")
    assert "HD95 (mm)" in " ".join(metric[0])  # summary.json says spacing-aware
    cases = next(t for t in p.tables if t[0][:2] == ["#", "Case"])
    order = [r[1] for r in cases[1:]]
    assert order == sorted(DICE, key=lambda c: -np.mean(DICE[c]))
    tags = {r[1]: r[-1] for r in cases[1:]}
    assert (tags["case2"], tags["case1"], tags["case0"]) == ("best", "median", "worst")


def test_picks_and_overlays(report, tiny_run):
    ev = read_eval(tiny_run["eval"])
    assert {k: v[0] for k, v in ev.pick_cases().items()} == {"best": "case2", "median": "case1", "worst": "case0"}
    text = report.html.read_text()
    assert "best case: case2" not in text  # titles are drawn inside the PNG, captions name the case
    assert "Best case case2" in text and "Worst case case0" in text
    assert not [n for n in report.notes if "overlay" in n]


def test_report_without_eval_still_builds_and_says_why(tiny_run, tmp_path):
    res = build_report(tiny_run["run"], out_dir=tmp_path / "r", standalone=False)
    text = res.html.read_text()
    assert "no evaluation folder" in text
    for s in referenced_images(text):
        _assert_png((res.out_dir / s).read_bytes(), s)
    assert {p.name for p in res.figures} == {"training_loss.png", "validation_dice.png", "validation_hd95.png"}
    assert res.standalone is None


def test_missing_predictions_are_noted_not_fatal(tiny_run, tmp_path):
    res = build_report(tiny_run["run"], eval_dir=tiny_run["eval"], pred_dir=tmp_path / "nowhere",
                       out_dir=tmp_path / "r", standalone=False)
    assert any("prediction folder" in n for n in res.notes)
    assert "prediction folder" in res.html.read_text()
    assert not list(res.out_dir.glob("overlay_*.png"))


def test_cli_report(tiny_run, tmp_path, capsys):
    out = tmp_path / "cli"
    # no predictions here (overlays are covered above): keeps this test cheap
    assert main(["report", str(tiny_run["run"]), "--eval", str(tiny_run["eval"]), "--out", str(out),
                 "--pred", str(tmp_path / "none"), "--no-standalone"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "index.html") in printed and (out / "report.md").is_file()
    assert "note: overlays left out" in printed
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "run folder not found" in capsys.readouterr().err


def test_wide_per_case_csv_and_describe(tmp_path):
    (tmp_path / "per_case.csv").write_text("case_id,dice_WT,dice_ET,hd95_WT,hd95_ET,dice_mean\n"
                                           "a,0.9,0.5,2,nan\nb,0.7,,4,6,0.7\n".replace(",nan\n", ",nan,0.7\n"))
    ev = read_eval(tmp_path)
    assert ev.labels == ["WT", "ET"] and ev.metrics == ["dice", "hd95"]
    assert ev.values("WT", "dice") == [0.9, 0.7] and ev.values("ET", "dice") == [0.5]
    assert ev.values("ET", "hd95") == [6.0]  # NaN and empty cells are left out, not counted as 0
    d = describe([1.0, 2.0, 3.0, 4.0])
    assert d["mean"] == 2.5 and d["median"] == 2.5 and d["q1"] == 1.75 and d["q3"] == 3.25
    assert d["std"] == pytest.approx(np.std([1, 2, 3, 4]))


def test_ras_reorientation_and_lesion_centre():
    arr = np.arange(24).reshape(2, 3, 4)
    aff = np.diag([-2.0, 1.0, 3.0, 1.0])  # x stored right-to-left
    out = to_ras(arr, aff)
    assert np.array_equal(out, arr[::-1])
    swapped = np.array([[0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])  # array axes (y, x, z)
    assert to_ras(arr, swapped).shape == (3, 2, 4)
    assert ras_spacing(swapped) == (1.0, 2.0, 3.0)
    # crescent: the centre of mass lies outside the mask, the chosen voxel must lie inside
    g = np.indices((21, 21, 3))
    r = np.hypot(g[0] - 10, g[1] - 10)
    crescent = (r < 9) & (r > 6) & (g[0] > 10)
    c = lesion_centre([np.zeros_like(crescent), crescent], crescent.shape)
    assert crescent[c]
    assert lesion_centre([np.zeros((4, 4, 4), bool)], (4, 4, 4)) == (2, 2, 2)


def test_overlay_of_a_plain_label_task(tmp_path):
    """Non-BraTS labels: one contour per label value, both rows drawn, valid PNG."""
    from attnseg.data.readers import Case
    from attnseg.report.overlays import load_overlay_case, plot_overlay

    img = np.random.default_rng(1).normal(50, 5, SHAPE).astype(np.float32)
    ref = np.zeros(SHAPE, np.uint8)
    ref[4:10, 4:10, 3:8] = 1
    ref[12:16, 8:14, 4:9] = 3
    pred = np.roll(ref, 1, axis=1)
    _save(img, tmp_path / "img.nii.gz")
    _save(ref, tmp_path / "ref.nii.gz")
    _save(pred, tmp_path / "pred.nii.gz")
    case = Case("c1", [tmp_path / "img.nii.gz"], tmp_path / "ref.nii.gz", "malc", "plain")
    oc = load_overlay_case(case, tmp_path / "pred.nii.gz")
    assert list(oc.reference) == ["1", "3"] and list(oc.prediction) == ["1", "3"]
    # masks were reoriented like the image: voxel counts are unchanged
    assert int(oc.reference["3"].sum()) == int((ref == 3).sum())
    assert oc.spacing == pytest.approx(ras_spacing(AFFINE))
    path = plot_overlay(oc, tmp_path / "o.png")
    _assert_png(path.read_bytes(), "plain overlay")
