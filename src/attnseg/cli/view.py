"""``attnseg view``: the NiiVue case viewer served over HTTP on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view", help="interactive case viewer (NiiVue) served on 127.0.0.1: image, ground truth, prediction, errors",
        description="Serve the case viewer of the report for every case of a run folder (predictions, evaluation "
                    "and dataset found as `attnseg report` finds them) or of a predictions folder (give --data), "
                    "at full resolution, on a local HTTP server (127.0.0.1 only). Opens the browser when there is "
                    "a graphical one, else prints the URL. Stop with Ctrl-C.")
    p.add_argument("target", metavar="RUN_DIR|PRED_DIR",
                   help="run folder of `attnseg train`, or a folder of predictions <case>.nii.gz")
    p.add_argument("--data", dest="data_dir", default=None,
                   help="dataset with the images and ground truth (default for a run folder: the reference folder "
                        "recorded by evaluate, else data.root of the run's config)")
    p.add_argument("--eval", dest="eval_dir", default=None,
                   help="output folder of `attnseg evaluate`, for the scores in the table (default: RUN_DIR/eval)")
    p.add_argument("--pred", dest="pred_dir", default=None,
                   help="predictions folder, for a run folder whose predictions are elsewhere")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    p.set_defaults(func=run)


def _gui_browser_likely() -> bool:
    # without a display, Python's webbrowser falls back to text browsers (lynx, w3m) that would take
    # over the terminal: there the URL is printed instead
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run(args: argparse.Namespace) -> int:
    from attnseg.report.viewer_server import collect, make_server

    vs = collect(args.target, data_dir=args.data_dir, eval_dir=args.eval_dir, pred_dir=args.pred_dir)
    try:
        server = make_server(vs, args.port)
    except OSError as exc:  # port taken, no permission
        raise ValueError(f"cannot serve on 127.0.0.1:{args.port}: {exc.strerror or exc}") from exc
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    for n in vs.notes:
        print(f"note: {n}")
    print(f"{len(vs.cases)} of {len(vs.section.rows)} cases can be viewed")
    print(f"serving on {url}  (Ctrl-C stops)", flush=True)
    if not args.no_browser and _gui_browser_likely():
        import webbrowser

        if not webbrowser.open(url):
            print("no browser could be opened: open the URL above", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
