"""dcm2niix as the tests run it: one series folder in, its one volume out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DCM2NIIX = shutil.which("dcm2niix") or shutil.which("dcm2niix",
                                                   path=os.path.dirname(sys.executable))


def convert_series(series: Path, out: Path) -> Path:
    """Convert the DICOM series in ``series`` into ``out`` (named ``<description>_<number>``)
    and return the one NIfTI volume it made; an assertion if dcm2niix fails or makes more."""
    assert DCM2NIIX, "dcm2niix is a test dependency"
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([DCM2NIIX, "-z", "y", "-f", "%d_%s", "-o", str(out), str(series)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (volume,) = out.glob("*.nii.gz")
    return volume
