"""Process-wide CPU settings are applied only when a caller opts in, never by importing attnseg."""

from __future__ import annotations

import subprocess
import sys

from attnseg.infer import fastpath
from attnseg.runtime import cpu


def test_importing_the_library_applies_no_process_setting():
    code = ("import attnseg.models, attnseg.attention, attnseg.train.trainer, attnseg.infer.predict, "
            "attnseg.infer.fastpath, attnseg.experiments.demo\n"
            "from attnseg.cli.main import build_parser\nbuild_parser()\n"
            "from attnseg.runtime import cpu\nprint(sorted(cpu._STATE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_opt_in_records_what_was_applied_and_old_import_path_is_the_same_function():
    assert fastpath.enable_cpu_fastpaths is cpu.enable_cpu_fastpaths
    assert fastpath.tune_malloc is cpu.tune_malloc
    applied = cpu.enable_cpu_fastpaths(malloc=False)  # malloc off: this test changes no allocator setting
    assert applied["malloc"] is False and applied["threads"] >= 1
    assert cpu._STATE["malloc"] is False
