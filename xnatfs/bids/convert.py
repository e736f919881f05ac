"""DICOM series → NIfTI + sidecar with dcm2niix, then what BIDS asks that dcm2niix leaves out.

dcm2niix comes from its PyPI package (a dependency), so the binary is the one installed with
xnatfs; ``$XNATFS_DCM2NIIX`` names another. One series goes into an empty folder of its own,
named by its BIDS stem. Its outputs are then named as BIDS wants: dcm2niix's ``_e2`` (echo)
and ``_ph`` (phase) endings become ``echo-2`` and ``part-phase``; any other extra image (a
localizer's three planes, say) fails the series, since no one name fits several images.
``TaskName``, required for func and not written by dcm2niix, comes from the ``task-`` entity.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from xnatfs.bids.names import BidsName
from xnatfs.bids.plan import split_extension
from xnatfs.errors import XnatfsError

_ENDING = re.compile(r"_(?:e(?P<echo>\d+)|(?P<ph>ph))$")


class ConversionError(XnatfsError):
    """One series could not be converted; the others go on."""


class ConverterMissing(XnatfsError):
    """dcm2niix cannot run at all: nothing can be converted."""


def dcm2niix() -> str:
    """The dcm2niix binary, or ConverterMissing saying why there is none."""
    given = os.environ.get("XNATFS_DCM2NIIX")
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise ConverterMissing(f"XNATFS_DCM2NIIX={given} is not an executable file")
        return given
    try:
        import dcm2niix as package
    except ImportError:
        package = None
    found = getattr(package, "bin", None) or shutil.which("dcm2niix")
    if not found or not os.access(str(found), os.X_OK):
        raise ConverterMissing("dcm2niix is not installed (pip install dcm2niix)")
    return str(found)


def check_converter(binary: str) -> None:
    """Run it once, so a broken install is one line before any download, not one per series."""
    try:
        subprocess.run([binary, "-v"], capture_output=True, timeout=60, check=False)
    except OSError as exc:
        raise ConverterMissing(f"dcm2niix cannot run ({binary}): "
                               f"{exc.strerror or exc}") from None


def convert(binary: str, dicom_dir: str, out_dir: str, name: BidsName, subject: str,
            session: str) -> dict[str, str]:
    """Convert one series: {BIDS file name: path of the converted file in ``out_dir``}."""
    stem = name.stem(subject, session)
    os.makedirs(out_dir, exist_ok=True)
    for old in os.listdir(out_dir):  # an interrupted earlier try
        os.unlink(os.path.join(out_dir, old))
    cmd = [binary, "-b", "y", "-ba", "y", "-z", "y", "-w", "1", "-f", stem, "-o", out_dir,
           dicom_dir]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              check=False, timeout=3600)
    except OSError as exc:
        raise ConverterMissing(f"dcm2niix cannot run: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise ConversionError("dcm2niix ran for over an hour") from None
    outputs = sorted(os.listdir(out_dir))
    images = [f for f in outputs if split_extension(f)[1] in (".nii.gz", ".nii")]
    if done.returncode or not images:
        said = [line for line in (done.stderr + done.stdout).splitlines()
                if line.strip() and ("rror" in line or "arning" in line)]
        why = said[-1].strip() if said else f"exit code {done.returncode}, no image written"
        raise ConversionError(f"dcm2niix failed: {why}")
    named: dict[str, str] = {}
    for produced in outputs:
        base, ext = split_extension(produced)
        final = _bids_name(base, stem, name, subject, session)
        if final is None:
            raise ConversionError(f"dcm2niix made {len(images)} images of one series "
                                  f"({', '.join(images[:3])}); name each in a bidsmap")
        named[final + ext] = os.path.join(out_dir, produced)
        if ext == ".json":
            complete_sidecar(named[final + ext], name)
    return named


def _bids_name(base: str, stem: str, name: BidsName, subject: str,
               session: str) -> str | None:
    if base == stem:
        return stem
    if not base.startswith(stem):
        return None
    m = _ENDING.fullmatch(base[len(stem):])
    if m is None:
        return None
    bids = name.with_entity("echo", m["echo"]) if m["echo"] else name
    if m["ph"]:
        bids = bids.with_entity("part", "phase")
    return bids.stem(subject, session)


def complete_sidecar(path: str, name: BidsName) -> None:
    """Add what BIDS requires of the sidecar at ``path`` and its source may lack."""
    with open(path, encoding="utf-8") as f:
        sidecar = json.load(f)
    task = name.get("task")
    if name.datatype == "func" and task and not sidecar.get("TaskName"):
        sidecar["TaskName"] = task
        with open(path, "w", encoding="utf-8") as f:
            json.dump(sidecar, f, indent=2)
            f.write("\n")
