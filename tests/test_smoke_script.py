"""The GPU smoke script runs on the CPU with --cpu (tiny steps) and reports a speed for every entry."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import smoke  # noqa: E402


def test_smoke_script_cpu_mode(tmp_path):
    """Every entry (SWAD, SimCLR with and without ScoreCL, PRS, QG, PPAP, ANT-UW) runs 3 steps; 2 are timed."""
    rows = smoke.main(["--cpu", "--steps", "3", "--out", str(tmp_path / "smoke.json")])
    assert [r["method"] for r in rows] == list(smoke.ENTRIES)
    expected = {
        "swad_pacs",
        "simclr_cifar10",
        "scorecl_simclr_cifar10",
        "prs_cifar100",
        "qg_t5_squad",
        "ppap_resnet50_imagenet",
        "ant_adm_ffhq_uw",
    }
    assert expected <= set(smoke.ENTRIES)
    assert all(r["steps"] == 3 and r["steps_per_s"] > 0 and math.isfinite(r["steps_per_s"]) for r in rows)
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["device"] == "cpu" and [r["method"] for r in saved["rows"]] == list(smoke.ENTRIES)


def test_shell_wrapper_refuses_gpu_mode_without_gpu():
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_smoke.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "use --cpu" in proc.stderr
