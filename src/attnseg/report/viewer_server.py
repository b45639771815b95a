"""``attnseg view``: the case viewer of the report served over HTTP on 127.0.0.1.

Unlike the report, which embeds 8-bit, budget-limited copies, the server sends each case's
volumes at full resolution and in their own intensities (cropped to the foreground, gzip
level 1), prepared when the page asks for the case; the last few cases stay in memory.
Everything (page, NiiVue, volumes) comes from this process: nothing is fetched from the network.
"""

from __future__ import annotations

import gzip
import html
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from attnseg.data.io import is_image_file, strip_suffix
from attnseg.report.rundata import read_eval, read_run
from attnseg.report.viewer import (
    CasesSection,
    _payload,
    case_script,
    case_table,
    load_case_volumes,
    match_cases,
    niivue_js,
)

CACHED_CASES = 4  # prepared cases kept in memory


@dataclass
class ViewSet:
    """What ``attnseg view`` shows: the table, and per table row the case and its prediction."""

    title: str
    section: CasesSection
    cases: dict[int, tuple[Any, Path]]  # row index -> (data-layer Case, prediction path)
    notes: list[str] = field(default_factory=list)


def _is_run_dir(p: Path) -> bool:
    return (p / "metrics.csv").is_file() or (p / "config.yaml").is_file()


def collect(target: str | Path, data_dir: str | Path | None = None, eval_dir: str | Path | None = None,
            pred_dir: str | Path | None = None) -> ViewSet:
    """Resolve ``attnseg view TARGET``: a run folder of ``attnseg train`` (predictions, evaluation
    and dataset found as ``attnseg report`` finds them) or a folder of predictions ``<case>.nii.gz``
    (``--data`` names the dataset; ``--eval`` adds the scores).

    Raises ``FileNotFoundError``/``ValueError`` naming the folder when nothing can be shown.
    """
    target = Path(target)
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: folder not found (give a run folder or a predictions folder)")
    ev = None
    if _is_run_dir(target):
        run = read_run(target)
        title = f"attnseg view: {run.name}"
        if eval_dir is None:
            eval_dir = next((target / n for n in ("eval", "evaluation") if (target / n).is_dir()), None)
        ev = read_eval(eval_dir) if eval_dir is not None else None
        info = _eval_info(ev)
        if pred_dir is None:
            pred_dir = info.get("pred") or next((target / n for n in ("predictions", "pred")
                                                 if (target / n).is_dir()), None)
        if data_dir is None:
            data_dir = info.get("ref") or run.data_root()
    else:
        title = f"attnseg view: {target.name}"
        pred_dir = pred_dir or target
        ev = read_eval(eval_dir) if eval_dir is not None else None
        if data_dir is None:
            data_dir = _eval_info(ev).get("ref")
    if pred_dir is None or not Path(pred_dir).is_dir():
        raise FileNotFoundError(f"{pred_dir or target}: no predictions folder (pass --pred)")
    if data_dir is None:
        raise ValueError(f"{target}: which dataset holds the images and ground truth? pass --data DATA")
    pred_ids = sorted(strip_suffix(f.name) for f in Path(pred_dir).iterdir()
                      if f.is_file() and is_image_file(f) and not f.name.startswith("."))
    picks = ev.pick_cases("dice" if "dice" in ev.metrics else ev.metrics[0]) if ev is not None and ev.metrics else {}
    header, rows = case_table(ev, pred_ids, picks)
    found, notes = match_cases(Path(data_dir), Path(pred_dir), [r.case_id for r in rows])
    if not found:
        why = f" ({notes[0]})" if notes else ""
        raise ValueError(f"{pred_dir}: no prediction matches a case of {data_dir}{why}")
    cases = {i: found[r.case_id] for i, r in enumerate(rows) if r.case_id in found}
    section = CasesSection(header, rows, notes=notes, viewable=set(cases))
    return ViewSet(title, section, cases, notes)


def _eval_info(ev: Any) -> dict[str, Any]:
    if ev is None:
        return {}
    info = ev.summary.get("info") if isinstance(ev.summary.get("info"), dict) else {}
    return {k: (ev.summary.get(k) or info.get(k)) for k in ("pred", "ref")
            if isinstance(ev.summary.get(k) or info.get(k), str)}


def page_html(vs: ViewSet) -> str:
    """The viewer page: title, Cases table, viewer; scripts and volumes come from this server."""
    t = html.escape(vs.title)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{t}</title><style>{_PAGE_CSS}</style></head>\n<body><main>\n<h1>{t}</h1>\n"
            f'<section id="cases"><h2>Cases</h2>{vs.section.html(embed=False)}</section>\n</main></body></html>\n')


_PAGE_CSS = ("body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;"
             "color:#1d1d1f;background:#f6f7f9}main{max-width:1280px;margin:0 auto;padding:16px 24px;"
             "background:#fff}h1{font-size:22px}h2{font-size:18px;border-bottom:2px solid #e4e6ea}"
             "table{border-collapse:collapse;font-size:14px}th,td{padding:4px 9px;border-bottom:1px solid #e4e6ea;"
             "text-align:right;white-space:nowrap}th{background:#f0f2f5}td:nth-child(2),th:nth-child(2){text-align:left}"
             "tr.pick td{background:#fff8e1}.note{background:#fff4e5;border-left:4px solid #f0a030;padding:8px 12px;"
             "font-size:14px;margin:10px 0}.help{font-size:13px;color:#555}"
             ".swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;"
             "margin-right:4px}")


class CaseStore:
    """Full-resolution volumes of the cases, encoded on first request; the last few kept."""

    def __init__(self, vs: ViewSet, keep: int = CACHED_CASES) -> None:
        self.vs = vs
        self.keep = keep
        self._cache: OrderedDict[int, tuple[dict[str, Any], dict[str, bytes]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, n: int) -> tuple[dict[str, Any], dict[str, bytes]]:
        with self._lock:
            if n in self._cache:
                self._cache.move_to_end(n)
                return self._cache[n]
            case, pred = self.vs.cases[n]
            cv = load_case_volumes(case, pred, quantised=False)
            blobs, vols = {}, []
            for key, name, raw in cv.volumes():
                blobs[key] = gzip.compress(raw, 1, mtime=0)
                vols.append({"key": key, "name": name, "url": f"viewer/case_{n:03d}/{key}.nii.gz"})
            entry = (_payload(cv, vols), blobs)
            self._cache[n] = entry
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
            return entry


def make_server(vs: ViewSet, port: int = 0) -> ThreadingHTTPServer:
    """HTTP server on 127.0.0.1:``port`` (0: a free port) serving the page, NiiVue and the volumes."""
    store = CaseStore(vs)
    page = page_html(vs).encode("utf-8")
    nv_js = niivue_js().encode("utf-8")
    case_js = re.compile(r"^/viewer/case_(\d{3,})\.js$")
    case_vol = re.compile(r"^/viewer/case_(\d{3,})/(\w+)\.nii\.gz$")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0].split("#", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    return self._send(page, "text/html; charset=utf-8")
                if path == "/viewer/niivue.umd.js":
                    return self._send(nv_js, "text/javascript; charset=utf-8")
                m = case_js.match(path)
                if m and int(m.group(1)) in vs.cases:
                    payload, _ = store.get(int(m.group(1)))
                    return self._send(case_script(int(m.group(1)), payload).encode(), "text/javascript; charset=utf-8")
                m = case_vol.match(path)
                if m and int(m.group(1)) in vs.cases:
                    _, blobs = store.get(int(m.group(1)))
                    if m.group(2) in blobs:
                        return self._send(blobs[m.group(2)], "application/octet-stream")
            except (ValueError, OSError) as exc:  # unreadable case: the page shows the message
                return self._send(str(exc).encode(), "text/plain; charset=utf-8", 500)
            self._send(b"not found", "text/plain", 404)

        def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the terminal shows the URL only
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)
