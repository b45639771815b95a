"""The report's case viewer (NiiVue): embedded volumes, the Cases section, `attnseg view` over
HTTP, and the page itself in headless Chromium (what NiiVue loaded, read from the page)."""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from attnseg.cli.main import main
from attnseg.report import viewer as V
from attnseg.report.html import build_report
from attnseg.report.viewer_browser import Chromium
from attnseg.report.viewer_browser import main as shoot

SHAPE = (22, 20, 12)
AFFINE = np.array([[0.0, -1.2, 0.0, 20.0], [1.0, 0.0, 0.0, -8.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1]])
DICE = {"case0": (0.50, 0.40, 0.10), "case1": (0.80, 0.70, 0.60), "case2": (0.95, 0.90, 0.85)}
CHANNELS = ("t1", "t1ce", "t2", "flair")
# the browser test is mandatory where this is set (.ci/run sets it); elsewhere it skips, saying why
REQUIRE_BROWSER = os.environ.get("ATTNSEG_REQUIRE_BROWSER") == "1"


def _sphere(centre, radius) -> np.ndarray:
    g = np.indices(SHAPE).astype(np.float32)
    d2 = sum((g[i] - centre[i]) ** 2 * (1.0, 1.0, 4.0)[i] for i in range(3))
    return d2 < radius ** 2


def _save(arr: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Three BraTS-layout cases (head inside a zero background, so cropping matters), predictions
    shifted by one voxel (case0 calls ET necrosis), an evaluation and a run folder."""
    root = tmp_path_factory.mktemp("viewer")
    data, run, pred = root / "data", root / "run", root / "pred"
    ev = run / "eval"  # where `attnseg report` and `attnseg view` look by default
    for d in (data, run, pred, ev):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    head = _sphere((11, 10, 6), 7.5)
    for i, cid in enumerate(DICE):
        (data / cid).mkdir()
        c = (10 + i % 2, 10, 6)
        lab = np.zeros(SHAPE, np.uint8)
        lab[_sphere(c, 5)] = 2
        lab[_sphere(c, 3.5)] = 4
        lab[_sphere(c, 2)] = 1
        lab[~head] = 0
        for j, mod in enumerate(CHANNELS):
            img = (rng.normal(100 + 20 * j, 5, SHAPE) + 40 * (lab > 0)) * head
            _save(img.astype(np.float32), data / cid / f"{cid}_{mod}.nii.gz")
        _save(lab, data / cid / f"{cid}_seg.nii.gz")
        p = lab.copy()
        if i == 0:
            p[p == 4] = 1
        _save(np.roll(p, 1, axis=0), pred / f"{cid}.nii.gz")
    (run / "metrics.csv").write_text("epoch,iteration,lr,train_loss,time_s\n1,5,0.001,1.0,1\n2,10,0.001,0.6,1\n")
    (run / "config.yaml").write_text(f"model:\n  name: unet\ntask:\n  kind: brats-regions\n  num_classes: 4\n"
                                     f"data:\n  root: {data}\n")
    with (ev / "per_case.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "region", "dice", "hd95"])
        for cid, d in DICE.items():
            for region, v in zip(("WT", "TC", "ET"), d):
                w.writerow([cid, region, v, round(10 * (1 - v), 3)])
    (ev / "summary.json").write_text(json.dumps({"pred": str(pred), "ref": str(data)}))
    # a tiny U-Net with PAM: the viewer shows each case's slice-weight profile
    import torch

    from attnseg.models import create_model
    from attnseg.train.checkpoint import model_checkpoint, save_checkpoint

    torch.manual_seed(0)
    kw = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": (4, 8, 8), "attention": "pam-adaptive",
          "attention_at": ("encoder",)}
    task = {"kind": "brats-regions", "num_classes": 4, "in_channels": 4, "channel_names": list(CHANNELS),
            "patch_size": [16, 16, 16], "preprocess": {"crop_nonzero": True, "normalize": "zscore"}}
    (run / "checkpoints").mkdir()
    save_checkpoint(model_checkpoint("unet", kw, create_model("unet", **kw).state_dict(), task=task),
                    run / "checkpoints" / "best.pt")
    return {"root": root, "data": data, "run": run, "pred": pred, "eval": ev, "ckpt": run / "checkpoints" / "best.pt"}


@pytest.fixture(scope="module")
def report(tiny):
    return build_report(tiny["run"], out_dir=tiny["root"] / "report")


def _read_nifti(raw: bytes) -> nib.Nifti1Image:
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return nib.Nifti1Image.from_bytes(raw)


def _payload_volumes(payload: dict) -> dict[str, nib.Nifti1Image]:
    return {v["key"]: _read_nifti(base64.b64decode(v["b64"])) for v in payload["volumes"]}


def _case(tiny, cid: str):
    from attnseg.data.readers import find_cases

    return next(c for c in find_cases(tiny["data"]) if c.case_id == cid)


# ------------------------------------------------------------------------------- pieces
def test_vendored_niivue_is_the_pinned_build_with_its_licence():
    js = (V.STATIC_DIR / "niivue.umd.js").read_bytes()
    assert hashlib.sha256(js).hexdigest() == V.NIIVUE_SHA256
    assert V.niivue_js().startswith("(function(")  # the UMD build: defines the global `niivue`
    lic = (V.STATIC_DIR / "NIIVUE_LICENSE.txt").read_text()
    assert "BSD 2-Clause License" in lic and f"@niivue/niivue {V.NIIVUE_VERSION}" in lic
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"report/static/*"' in pyproject  # shipped as package data


def test_quantise_keeps_zero_and_reads_back_within_half_a_step():
    rng = np.random.default_rng(1)
    img = np.zeros((10, 10, 10), np.float32)
    img[2:8, 2:8, 2:8] = rng.uniform(50, 900, (6, 6, 6))
    q, slope, inter = V.quantise(img)
    assert q.dtype == np.uint8 and inter == 0.0
    assert np.all(q[img == 0] == 0)
    hi = np.percentile(img[img != 0], 99.9)
    inside = img <= hi
    back = q * slope + inter
    assert np.abs(back - np.minimum(img, hi))[inside].max() <= slope / 2 + 1e-3
    neg = img - 100.0  # CT-like: negative values keep their range too
    qn, sn, inn = V.quantise(neg)
    assert inn < 0 and abs((qn * sn + inn).min() - neg.min()) <= sn


def test_nifti_bytes_round_trip_with_scaling():
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    im = nib.Nifti1Image.from_bytes(V.nifti_bytes(data, AFFINE, slope=0.5, inter=-3.0))
    assert np.allclose(im.affine, AFFINE)
    assert np.array_equal(np.asarray(im.dataobj.get_unscaled()), data)
    assert np.allclose(im.get_fdata(), data * 0.5 - 3.0)


def test_error_map_values():
    ref = np.array([0, 0, 1, 1, 2, 2, 0])
    pred = np.array([0, 1, 0, 1, 3, 2, 2])
    assert V.error_map(ref, pred).tolist() == [0, 1, 2, 0, 3, 0, 1]


def test_case_volumes_crop_keeps_world_coordinates_and_brats_classes(tiny):
    case = _case(tiny, "case1")
    cv = V.load_case_volumes(case, tiny["pred"] / "case1.nii.gz")
    assert cv.channels == list(CHANNELS)
    assert all(im.dtype == np.uint8 for im in cv.images)
    full = np.asarray(nib.load(str(tiny["data"] / "case1" / "case1_flair.nii.gz")).dataobj)
    nz = np.argwhere(full != 0)
    lo = np.maximum(nz.min(0) - V.CROP_MARGIN, 0)
    assert cv.images[0].shape == tuple(np.minimum(nz.max(0) + 1 + V.CROP_MARGIN, SHAPE) - lo)
    assert cv.images[0].shape != SHAPE  # the zero background was cropped away
    # the cropped voxel (0,0,0) sits where the original voxel `lo` was
    assert np.allclose(cv.affine @ [0, 0, 0, 1], AFFINE @ [*lo, 1])
    lab = np.asarray(nib.load(str(tiny["data"] / "case1" / "case1_seg.nii.gz")).dataobj)
    sel = tuple(slice(a, a + s) for a, s in zip(lo, cv.images[0].shape))
    expect = np.select([lab[sel] == 1, lab[sel] == 2, lab[sel] == 4], [1, 2, 3], 0)  # BraTS 4 -> class 3
    assert np.array_equal(cv.reference, expect)
    assert cv.labels.names == ["NCR/NET", "ED", "ET"]
    c = cv.centre()
    assert cv.reference[tuple(c)] > 0


def test_payload_within_budget_downsamples(tiny):
    case = _case(tiny, "case2")
    full = V.embedded_payload(case, tiny["pred"] / "case2.nii.gz", budget=10**9)
    assert full["stride"] == 1
    small_budget = V.payload_size(full) // 3
    small = V.embedded_payload(case, tiny["pred"] / "case2.nii.gz", budget=small_budget)
    assert small["stride"] >= 2 and V.payload_size(small) <= small_budget
    vols = _payload_volumes(small)
    assert set(vols) == {"ch0", "ch1", "ch2", "ch3", "gt", "pred", "err"}
    assert all(list(v.shape) == small["dims"] for v in vols.values())
    # downsampled grid: voxel sizes grow by the stride, world position of voxel 0 unchanged
    assert np.allclose(np.linalg.norm(vols["gt"].affine[:3, :3], axis=0),
                       small["stride"] * np.linalg.norm(AFFINE[:3, :3], axis=0))


# ------------------------------------------------------------------------------- report
def test_report_cases_section_table_files_and_no_network(report, tiny):
    text = report.html.read_text()
    assert '<section id="cases"><h2>Cases</h2>' in text
    cfg = json.loads(re.search(r'id="attnseg-viewer-config">(.*?)</script>', text, re.S).group(1))
    order = sorted(DICE, key=lambda c: -np.mean(DICE[c]))
    assert [c["id"] for c in cfg["cases"]] == order and all(c["available"] for c in cfg["cases"])
    assert cfg["cases"][0]["cells"]["Dice WT"] == "0.950" and cfg["niivue"] == V.NIIVUE_VERSION
    for cid in DICE:
        assert f'href="#case={cid}"' in text
    assert '<script src="viewer/niivue.umd.js"></script>' in text and "<noscript>" in text
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from the network
    viewer = report.out_dir / "viewer"
    assert (viewer / "niivue.umd.js").read_bytes() == (V.STATIC_DIR / "niivue.umd.js").read_bytes()
    assert (viewer / "NIIVUE_LICENSE.txt").is_file()
    for n, cid in enumerate(order):
        js = (viewer / f"case_{n:03d}.js").read_text()
        assert js.startswith(f"window.attnsegCaseData({n},")
        payload = json.loads(js[js.index(",") + 1: js.rindex(")")])
        assert payload["id"] == cid and V.payload_size(payload) <= V.CASE_BUDGET_BYTES
        vols = _payload_volumes(payload)
        flair = np.asarray(nib.load(str(tiny["data"] / cid / f"{cid}_flair.nii.gz")).dataobj)
        q = vols["ch3"]
        assert q.get_data_dtype() == np.uint8
        # the quantised copy reads out in the image's units (within one 8-bit step)
        assert abs(q.get_fdata().max() - np.percentile(flair[flair != 0], 99.9)) <= float(q.dataobj.slope)
        # error map: every FP / FN / wrong-label voxel of the full volumes is inside the crop
        lab = np.asarray(nib.load(str(tiny["data"] / cid / f"{cid}_seg.nii.gz")).dataobj)
        pred = np.asarray(nib.load(str(tiny["pred"] / f"{cid}.nii.gz")).dataobj)
        err = np.asarray(vols["err"].dataobj)
        assert (err == 1).sum() == ((pred > 0) & (lab == 0)).sum() > 0
        assert (err == 2).sum() == ((lab > 0) & (pred == 0)).sum() > 0
        assert (err == 3).sum() == ((lab > 0) & (pred > 0) & (lab != pred)).sum() > 0
        # the model has slice attention: the profile of its finest level, in the case's slice numbers
        from attnseg.report.slice_weights import case_slice_weights

        prof = payload["slice_profile"]
        res = case_slice_weights(tiny["ckpt"], tiny["data"] / cid)
        finest = max(res.profiles, key=lambda q: len(q.weights))
        assert prof["axis"] == res.slice_axis and np.allclose(prof["weights"], finest.weights)
        assert 0 <= min(prof["slices"]) and max(prof["slices"]) < SHAPE[prof["axis"]]
    # the standalone page carries NiiVue and every case inline
    sa = report.standalone.read_text()
    assert V.niivue_js()[:2000] in sa and sa.count('<script type="application/json" id="attnseg-case-') == 3
    assert 'src="viewer/' not in sa


def test_report_markdown_lists_the_cases(report):
    md = report.markdown.read_text()
    assert "## Cases" in md and "| # | Case |" in md and "| 1 | case2 |" in md


def test_viewer_left_out_with_a_note_when_predictions_are_missing(tiny, tmp_path):
    res = build_report(tiny["run"], eval_dir=tiny["eval"], pred_dir=tmp_path / "none", out_dir=tmp_path / "r",
                       standalone=False)
    text = res.html.read_text()
    assert "viewer left out: prediction folder" in text
    assert not list((res.out_dir / "viewer").glob("case_*.js"))
    cfg = json.loads(re.search(r'id="attnseg-viewer-config">(.*?)</script>', text, re.S).group(1))
    assert not any(c["available"] for c in cfg["cases"])


# ------------------------------------------------------------------------------- attnseg view
def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _case_payload(body: bytes) -> dict:
    s = body.decode()
    return json.loads(s[s.index(",") + 1: s.rindex(")")])


def test_view_cli_serves_page_niivue_and_full_resolution_volumes(tiny):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISPLAY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "attnseg.cli.main", "view", str(tiny["run"]), "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        while "serving on" not in line:
            line = proc.stdout.readline()
            assert line, f"attnseg view exited: {proc.stderr.read()}"
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        status, page = _get(url)
        assert status == 200 and b"attnseg view: run" in page and b'id="attnseg-viewer-config"' in page
        cfg = json.loads(re.search(rb'id="attnseg-viewer-config">(.*?)</script>', page, re.S).group(1))
        assert cfg["base"] == "viewer/" and [c["id"] for c in cfg["cases"]][0] == "case2"
        status, js = _get(url + "viewer/niivue.umd.js")
        assert status == 200 and hashlib.sha256(js).hexdigest() == V.NIIVUE_SHA256
        status, body = _get(url + "viewer/case_001.js")
        payload = _case_payload(body)
        assert status == 200 and payload["id"] == "case1" and not payload["quantised"] and payload["stride"] == 1
        vols = {}
        for v in payload["volumes"]:
            status, raw = _get(url + v["url"])
            assert status == 200 and raw[:2] == b"\x1f\x8b"
            vols[v["key"]] = _read_nifti(raw)
        flair = np.asarray(nib.load(str(tiny["data"] / "case1" / "case1_flair.nii.gz")).dataobj)
        lo = [int(round(x)) for x in np.linalg.solve(AFFINE, vols["ch3"].affine @ [0, 0, 0, 1])[:3]]
        sel = tuple(slice(a, a + s) for a, s in zip(lo, vols["ch3"].shape))
        assert np.array_equal(np.asarray(vols["ch3"].dataobj), flair[sel])  # own intensities, unquantised
        assert _get(url + "viewer/case_009.js")[0] == 404 and _get(url + "etc/passwd")[0] == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_view_reports_a_taken_port_in_one_line(tiny, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["view", str(tiny["run"]), "--no-browser", "--port", str(port)]) == 1
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


def test_view_a_predictions_folder_needs_the_dataset(tiny, capsys):
    assert main(["view", str(tiny["pred"]), "--no-browser"]) == 1
    assert "pass --data" in capsys.readouterr().err
    from attnseg.report.viewer_server import collect

    vs = collect(tiny["pred"], data_dir=tiny["data"])  # no scores: cases in name order
    assert [r.case_id for r in vs.section.rows] == sorted(DICE) and sorted(vs.cases) == [0, 1, 2]
    assert vs.section.header == ["#", "Case"]


# ------------------------------------------------------------------------------- in a browser
@pytest.fixture(scope="module")
def browser():
    from attnseg.report.viewer_browser import Chromium, find_chromium

    if find_chromium() is None:
        msg = ("chromium is not installed: the viewer's browser test cannot run (Debian: apt-get install "
               "chromium; ATTNSEG_CHROMIUM names another executable)")
        if REQUIRE_BROWSER:
            pytest.fail(msg + " and ATTNSEG_REQUIRE_BROWSER=1 makes it mandatory")
        pytest.skip(msg + " -- SKIPPED, set ATTNSEG_REQUIRE_BROWSER=1 to make this a failure (CI does)")
    with Chromium(width=1100, height=900, timeout=90) as b:
        yield b


def _canvas_pixels(b) -> np.ndarray:
    png = b.screenshot(clip=b.element_box("#attnseg-canvas"))
    return mpimg.imread(io.BytesIO(png), format="png")[..., :3]


def test_report_viewer_in_headless_chromium(browser, report, tiny):
    from attnseg.report.viewer_browser import open_viewer

    order = sorted(DICE, key=lambda c: -np.mean(DICE[c]))
    browser.call("Network.enable")  # every request the pages make is recorded (checked below)
    state = open_viewer(browser, report.standalone.resolve().as_uri(), timeout=90)
    assert state["error"] is None and state["ready"]
    first = json.loads((report.out_dir / "viewer" / "case_000.js").read_text().split(",", 1)[1].rsplit(")", 1)[0])
    # what NiiVue loaded: the volume's dimensions, four volumes, label values and names
    assert state["caseId"] == order[0] and state["dims"] == first["dims"]
    assert state["channelName"] == "flair" and len(state["volumes"]) == 4
    assert state["labelValues"]["gt"] == [1, 2, 3] and state["labelNames"] == ["NCR/NET", "ED", "ET"]
    assert state["labelValues"]["pred"] == [1, 2, 3] and state["labelValues"]["err"] == [1, 2, 3]
    # the crosshair opens inside the lesion (placed in world coordinates on this oblique, flipped grid)
    assert "flair " in state["readout"] and "ground truth: " in state["readout"]
    assert "ground truth: –" not in state["readout"], state["readout"]
    # slice-weight profile drawn next to the planes, with the crosshair's slice marked
    axis = first["slice_profile"]["axis"]
    assert state["profile"] and 0 <= state["profileSlice"] < SHAPE[axis]
    file_voxel = [o + c * first["stride"] for o, c in zip(first["origin"], first["centre"])]
    assert state["profileSlice"] == file_voxel[axis]
    assert state["readout"].startswith(f"voxel ({file_voxel[0]}, {file_voxel[1]}, {file_voxel[2]})")
    px = _canvas_pixels(browser)
    assert px.shape[0] > 300 and px.shape[1] > 300
    lit = px.max(axis=2) > 0.1
    coloured = (px.max(axis=2) - px.min(axis=2)) > 0.25  # label overlay (grey image has r == g == b)
    assert lit.mean() > 0.05 and coloured.sum() > 100, (lit.mean(), coloured.sum())
    # keyboard: next case in table order, next modality; errors on
    browser.press("j")
    browser.wait_for(f"window.attnsegViewer.state.ready && window.attnsegViewer.state.caseId === '{order[1]}'", 60)
    browser.press("m")
    s = json.loads(browser.wait_for("window.attnsegViewer.state.ready && window.attnsegViewer.state.channel === 0"
                                    " && JSON.stringify(window.attnsegViewer.state)", 60))
    assert s["channelName"] == "t1" and s["caseId"] == order[1]
    browser.press("e")
    assert browser.evaluate("window.attnsegViewer.state.opacity.err") == pytest.approx(0.8)
    # sorting by the Case column puts case0 first
    browser.evaluate("document.querySelector('#cases-table th[data-col=\"1\"]').click()")
    assert browser.evaluate("Array.from(document.querySelectorAll('#cases-table tbody tr'))"
                            ".map(r => r.cells[1].textContent)") == sorted(DICE)
    # the folder version (scripts next to index.html, loaded from file://) works too
    state = open_viewer(browser, report.html.resolve().as_uri() + "#case=case0", timeout=90)
    assert state["error"] is None and state["caseId"] == "case0"
    assert state["labelValues"]["pred"] == [1, 2] and state["labelValues"]["gt"] == [1, 2, 3]  # no ET predicted
    # nothing came from the network: only the report's files and data: URIs (NiiVue's font, matcaps)
    urls = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert any(u.endswith("/viewer/case_002.js") for u in urls)  # recording worked: case0 loaded on demand
    assert {u.split(":", 1)[0] for u in urls} <= {"file", "data", "blob"}, sorted(set(urls))
    # without JavaScript: every static figure is shown, the (empty) viewer stays hidden
    browser.call("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.navigate(report.html.resolve().as_uri() + "?nojs")
        browser.wait_for("document.readyState === 'complete' && location.search === '?nojs'", 60)
        imgs = browser.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert len(imgs) == len(report.figures) and all(w > 100 for _, w in imgs), imgs
        assert browser.evaluate("document.getElementById('attnseg-viewer').hidden && !window.attnsegViewer")
    finally:
        browser.call("Emulation.setScriptExecutionDisabled", {"value": False})


def test_view_server_in_headless_chromium(browser, tiny):
    from attnseg.report.viewer_browser import open_viewer
    from attnseg.report.viewer_server import collect, make_server

    server = make_server(collect(tiny["run"]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state = open_viewer(browser, f"http://127.0.0.1:{server.server_address[1]}/", timeout=90)
        assert state["error"] is None and state["caseId"] == "case2"
        assert state["labelValues"]["gt"] == [1, 2, 3] and len(state["volumes"]) == 4
    finally:
        server.shutdown()
        server.server_close()


def test_plain_labels_take_the_dataset_names_and_ct_keeps_negative_values(tmp_path):
    from attnseg.data.readers import Case

    ct = np.full(SHAPE, -1000.0, np.float32)  # air around a body of soft tissue
    ct[3:18, 3:16, 2:10] = 40.0
    ref = np.zeros(SHAPE, np.uint8)
    ref[5:10, 5:10, 3:7] = 1
    ref[12:15, 8:12, 4:8] = 3
    _save(ct, tmp_path / "ct.nii.gz")
    _save(ref, tmp_path / "ref.nii.gz")
    pred = np.roll(ref, 1, axis=2)
    pred[13, 8:12, 5:8] = 1  # tumour called liver: wrong label
    _save(pred, tmp_path / "pred.nii.gz")
    case = Case("liver7", [tmp_path / "ct.nii.gz"], tmp_path / "ref.nii.gz", "nnunet", "plain",
                {"channels": ["CT"], "label_names": {1: "liver", 2: "vessel", 3: "tumour"}})
    cv = V.load_case_volumes(case, tmp_path / "pred.nii.gz")
    assert cv.labels.values == [1, 2, 3] and cv.labels.names == ["liver", "vessel", "tumour"]
    assert len(set(cv.labels.colours)) == 3 and cv.channels == ["CT"]
    assert cv.images[0].shape == SHAPE  # air is not zero: nothing to crop
    slope, inter = cv.scales[0]
    assert inter == pytest.approx(-1000.0) and cv.images[0].min() == 0  # -1000 HU -> 0, read back as -1000
    assert (cv.images[0].max() * slope + inter) == pytest.approx(40.0, abs=slope)
    assert np.array_equal(cv.reference, ref) and sorted(np.unique(cv.errors).tolist()) == [0, 1, 2, 3]


def test_screenshot_of_a_report_section(browser, report, tmp_path):
    """`viewer_browser --element '#slice-weights'` (how docs/figures/report_slice_weights.png is
    made): the PNG is that section, the size of its box, and shows the slice-weight figure."""
    assert 'id="slice-weights"' in report.standalone.read_text()
    png = tmp_path / "section.png"
    assert shoot([str(report.standalone), "--screenshot", str(png), "--element", "#slice-weights"]) == 0
    with Chromium(timeout=90) as b:  # the command's window size, to compare the section's box
        b.navigate(report.standalone.resolve().as_uri())
        b.wait_for("document.getElementById('slice-weights') !== null", 60)
        box = b.element_box("#slice-weights")
    img = mpimg.imread(png)
    assert abs(img.shape[1] - box["width"]) <= 1 and abs(img.shape[0] - box["height"]) <= 1
    assert img.shape[0] > 200  # the heading and the figure
    assert img[..., :3].std() > 0.05  # not a blank area
