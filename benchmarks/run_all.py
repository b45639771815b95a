"""Run every benchmark and collect the results in docs/benchmarks.md (``make bench``).

1. ``benchmarks/machine.py``: machine description and measured peak conv3d throughput
   (fp32, bf16), the yardstick for the models' GFLOP/s.
2. Every other ``benchmarks/*.py`` (alphabetical, this file excluded), each in its own
   subprocess with its default arguments (``--quick`` with ``--quick``; per-script extra
   arguments below), under a per-script timeout and an overall budget: when the remaining
   budget is too small for a script's default run, it runs with ``--quick`` instead, and is
   skipped (with a note) when even that cannot fit.
3. docs/benchmarks.md: machine section, then one section per script with the exact command,
   its wall time and its tables. Scripts that can print Markdown (a ``--markdown`` flag or a
   ``--markdown FILE`` option, found in their ``--help``) are asked to; other output is kept
   verbatim in a code block. Every Markdown table column ending in ``GFLOP/s`` gets a
   ``% of peak`` column next to it (median fp32 conv3d throughput measured in step 1).

Comparisons (attnseg vs MONAI, module vs yardstick, ...) are measured side by side inside each
script, which reports ratios and min/median/max over repeats where it repeats; this runner only
collects. Run it on an otherwise idle machine.

    python benchmarks/run_all.py                      # full run, writes docs/benchmarks.md
    python benchmarks/run_all.py --quick              # every script with --quick
    python benchmarks/run_all.py --only machine,models --out /tmp/bench.md
    python benchmarks/run_all.py --list               # the commands it would run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# extra arguments per script for the full run (tuned so that `make bench` fits its budget)
# (attention: one thread and process CPU time, the steadier clock on a shared machine; the data
# pipeline's short run already compares 1 mm BraTS-sized cases; models at 32³ (every model, both
# passes); the sliding window in full: 1×4×240×240×155, ROI 128 and 96, window batch 1 and 2)
FULL_ARGS: dict[str, list[str]] = {
    "attention.py": ["--threads", "1", "--clock", "cpu", "--repeats", "5"],
    "data_pipeline.py": ["--quick"],
    "models.py": ["--quick"],
    "train_step.py": ["--repeats", "3", "--modes", "plain-fp32", "fast-fp32", "fast-bf16"],
    # one BraTS-sized case (240x240x155), 2-D / 2.5-D slice-wise vs a 3-D U-Net of similar size
    "slicewise.py": ["--repeats", "2", "--modes", "2d", "2.5d-k2", "3d"],
}
# rough wall-time expectation (minutes) of the full and the quick run, used for budgeting
EXPECTED_MIN: dict[str, tuple[float, float]] = {
    "models.py": (1.5, 1.5), "sliding_window.py": (10.0, 2.0), "data_pipeline.py": (3.0, 3.0),
    "attention.py": (2.5, 1.0), "train_step.py": (1.5, 1.0), "whole_step.py": (45.0, 6.0),
    "nnunet_peer.py": (60.0, 10.0),
    "slicewise.py": (5.0, 1.5), "evaluate.py": (3.0, 2.0), "compile.py": (8.0, 3.0),
}
DEFAULT_EXPECTED = (3.0, 1.0)


def scripts(only: list[str] | None = None) -> list[Path]:
    """Benchmark scripts to run (machine.py excluded: it always runs first)."""
    found = sorted(p for p in HERE.glob("*.py") if p.name not in ("run_all.py", "machine.py")
                   and not p.name.startswith("_"))
    if only:
        names = {n if n.endswith(".py") else f"{n}.py" for n in only}
        unknown = names - {p.name for p in found} - {"machine.py"}
        if unknown:
            raise SystemExit(f"run_all: unknown benchmark(s) {sorted(unknown)}; have {[p.name for p in found]}")
        found = [p for p in found if p.name in names]
    return found


def _help(script: Path) -> str:
    try:
        return subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                              timeout=120, cwd=ROOT).stdout
    except (subprocess.TimeoutExpired, OSError):
        return ""


def markdown_mode(help_text: str) -> str | None:
    """``"flag"`` for ``--markdown`` without a value, ``"file"`` for ``--markdown FILE``, else None."""
    m = re.search(r"--markdown(\s+[A-Z_]+)?", help_text)
    if not m:
        return None
    return "file" if m.group(1) else "flag"


def add_peak_columns(md: str, peak_gflops: float | None) -> str:
    """Insert a ``% of peak`` column after every ``…GFLOP/s`` column of every Markdown table in ``md``."""
    if not peak_gflops:
        return md
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        sep = lines[i + 1] if i + 1 < len(lines) else ""
        if line.startswith("|") and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", sep):
            head = [c.strip() for c in line.strip().strip("|").split("|")]
            cols = [j for j, h in enumerate(head) if h.endswith("GFLOP/s") and "peak" not in h.lower()]
            if not cols:
                out.append(line)
                i += 1
                continue
            block = [line, sep]
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                block.append(lines[j])
                j += 1
            for k, row in enumerate(block):
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                new: list[str] = []
                for c_i, c in enumerate(cells):
                    new.append(c)
                    if c_i in cols:
                        if k == 0:
                            new.append(f"{c} % of peak")
                        elif k == 1:
                            new.append("---")
                        else:
                            try:
                                new.append(f"{100 * float(c.replace(',', '')) / peak_gflops:.1f}%")
                            except ValueError:
                                new.append("–")
                out.append("| " + " | ".join(new) + " |")
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out) + ("\n" if md.endswith("\n") else "")


def _has_table(text: str) -> bool:
    return bool(re.search(r"^\|.*\|\s*\n\|(\s*:?-+:?\s*\|)+", text, re.M))


def run_script(script: Path, quick: bool, timeout: float) -> dict:
    """Run one benchmark; returns cmd, rc, wall seconds, stdout/stderr and any Markdown it produced."""
    help_text = _help(script)
    cmd = [sys.executable, str(script.relative_to(ROOT))]
    if quick and "--quick" in help_text:
        cmd.append("--quick")
    elif not quick:
        cmd += FULL_ARGS.get(script.name, [])
    mode = markdown_mode(help_text)
    md_file = None
    if mode == "flag":
        cmd.append("--markdown")
    elif mode == "file":
        fd, name = tempfile.mkstemp(suffix=".md")
        os.close(fd)
        md_file = Path(name)
        cmd += ["--markdown", str(md_file)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")) + \
            f"\n[run_all] timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    md = ""
    if md_file is not None:
        md = md_file.read_text() if md_file.is_file() else ""
        md_file.unlink(missing_ok=True)
    shown = ["python"] + [c if not (md_file and c == str(md_file)) else "FILE.md" for c in cmd[1:]]
    return {"script": script.name, "cmd": " ".join(shown), "rc": rc, "wall_s": wall, "stdout": out,
            "stderr": err, "markdown": md, "quick": "--quick" in cmd}


def merge_sections(old: str, new_sections: list[str], when: str) -> str:
    """``old`` (a benchmarks.md) with its ``## name`` sections replaced by those of
    ``new_sections`` (new names are appended) and, under the title, one line per regenerated
    section saying when (earlier lines for other sections are kept); the rest is kept as it was."""
    def split(text: str) -> tuple[str, list[tuple[str, str]]]:
        parts = text.split("\n## ")
        return parts[0], [(p.split("\n", 1)[0].strip(), "## " + p) for p in parts[1:]]

    head, old_parts = split(old)
    new = {name: body for name, body in (split("\n" + s)[1][0] for s in new_sections)}
    names = list(new)
    merged = [new.pop(name, body) for name, body in old_parts] + list(new.values())
    prefix = "- Section regenerated with `run_all.py --only`: "
    stale = tuple(f"{prefix}{n} " for n in names)
    lines = [ln for ln in head.split("\n") if not ln.startswith(stale)]
    while lines and not lines[-1].strip():
        lines.pop()
    notes = [f"{prefix}{n} on {when}." for n in names]
    if not any(ln.startswith(prefix) for ln in lines):
        lines.append("")
    return "\n".join(lines + notes + [""]) + "\n" + "\n".join(p.rstrip("\n") + "\n" for p in merged)


def _section(res: dict, peak: float | None) -> str:
    lines = [f"## {res['script']}", "",
             f"`{res['cmd']}` — {res['wall_s'] / 60:.1f} min, "
             + ("timed out" if res["rc"] == 124 else f"exit status {res['rc']}")
             + (" (quick mode)" if res["quick"] else ""), ""]
    doc = _docstring_first_line(HERE / res["script"])
    if doc:
        lines += [doc, ""]
    body = res["markdown"].strip()
    text = res["stdout"].strip()
    if body:
        lines.append(add_peak_columns(body, peak))
        rest = text
    elif _has_table(text):
        lines.append(add_peak_columns(text, peak))
        rest = ""
    else:
        rest = text
    if rest:
        lines += ["", "<details><summary>console output</summary>", "", "```", rest, "```", "", "</details>"]
    if res["rc"] != 0:
        tail = "\n".join(res["stderr"].strip().splitlines()[-15:])
        lines += ["", f"**Failed (exit {res['rc']})**, last lines of stderr:", "", "```", tail, "```"]
    return "\n".join(lines) + "\n"


def _docstring_first_line(path: Path) -> str:
    m = re.match(r'\s*(?:#.*\n)*\s*"""(.*?)(?:\n\n|""")', path.read_text(), re.S)
    return " ".join(m.group(1).split()) if m else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every script")
    p.add_argument("--only", default=None, help="comma-separated script names (e.g. machine,models)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--budget-min", type=float, default=19.0, help="overall wall-time budget in minutes")
    p.add_argument("--timeout-min", type=float, default=10.0, help="per-script timeout in minutes")
    p.add_argument("--list", action="store_true", help="print the scripts and exit")
    p.add_argument("--replace", action="store_true",
                   help="with --only: write a file with just those sections (default: replace those "
                        "sections in the existing --out and keep the others)")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    todo = scripts(only)
    if args.list:
        print("machine.py")
        for s in todo:
            print(s.name, " ".join(FULL_ARGS.get(s.name, [])))
        return 0
    start = time.perf_counter()
    deadline = start + 60 * args.budget_min
    sections: list[str] = []
    results: list[dict] = []
    peak = None
    if only is None or "machine" in only or "machine.py" in only:
        print("[run_all] machine.py", file=sys.stderr, flush=True)
        fd, jname = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        cmd = [sys.executable, "benchmarks/machine.py", "--json", jname] + (["--quick"] if args.quick else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60 * args.timeout_min)
        wall = time.perf_counter() - t0
        try:
            info = json.loads(Path(jname).read_text())
            fp32 = next(c for c in info["conv_peak"] if c["dtype"] == "fp32")
            peak = float(fp32["GFLOP/s_median"])
        except (OSError, ValueError, StopIteration, KeyError):
            info = None
        Path(jname).unlink(missing_ok=True)
        sections.append("## Machine\n\n" + f"`python {' '.join(cmd[1:3])}` — {wall:.0f} s\n\n"
                        + (proc.stdout.strip() if proc.returncode == 0 else f"machine.py failed:\n\n```\n"
                           f"{proc.stderr.strip()[-2000:]}\n```") + "\n"
                        + (f"\nPeak used for the `% of peak` columns below: median fp32 {peak:.1f} GFLOP/s.\n"
                           if peak else ""))
    for s in todo:
        full_min, quick_min = EXPECTED_MIN.get(s.name, DEFAULT_EXPECTED)
        left_min = (deadline - time.perf_counter()) / 60
        quick = args.quick
        if not quick and left_min < full_min:
            quick = True
        if left_min < (quick_min if quick else full_min) * 0.5:
            sections.append(f"## {s.name}\n\nSkipped: {left_min:.1f} min of the {args.budget_min:.0f}-minute "
                            f"budget left.\n")
            print(f"[run_all] {s.name}: skipped (budget)", file=sys.stderr, flush=True)
            continue
        timeout = min(60 * args.timeout_min, max(deadline - time.perf_counter(), 60))
        print(f"[run_all] {s.name}{' (quick)' if quick and not args.quick else ''} ...", file=sys.stderr, flush=True)
        res = run_script(s, quick, timeout)
        results.append(res)
        print(f"[run_all] {s.name}: exit {res['rc']} in {res['wall_s'] / 60:.1f} min", file=sys.stderr, flush=True)
        sections.append(_section(res, peak))
    total = time.perf_counter() - start
    head = ["# Benchmarks", "",
            f"Generated by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` (`make bench`) on "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC in {total / 60:.1f} min. Each script measures "
            "its comparisons side by side in one process run; figures from a shared machine are noisy, so compare "
            "the ratios, not absolute times across sections.", ""]
    text = "\n".join(head) + "\n" + "\n".join(sections)
    if only is not None and args.out.exists() and not args.replace:
        text = merge_sections(args.out.read_text(), sections,
                              f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    print(f"[run_all] wrote {args.out} ({total / 60:.1f} min)", file=sys.stderr)
    failed = [r["script"] for r in results if r["rc"] != 0]
    if failed:
        print(f"[run_all] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
