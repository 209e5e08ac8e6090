"""The GPU smoke script runs on the CPU with --cpu (tiny steps) and reports a speed for every entry."""

import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import smoke  # noqa: E402


def test_smoke_script_cpu_mode(tmp_path):
    rows = smoke.main(["--cpu", "--steps", "4", "--out", str(tmp_path / "smoke.json")])
    assert [r["method"] for r in rows] == list(smoke.ENTRIES)
    assert all(r["steps_per_s"] > 0 and math.isfinite(r["steps_per_s"]) for r in rows)
    assert (tmp_path / "smoke.json").is_file()


def test_shell_wrapper_refuses_gpu_mode_without_gpu():
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_smoke.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "use --cpu" in proc.stderr
