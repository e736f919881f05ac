"""The one demo archive and its user, shared by the emulator's command line and ``xnatfs demo``.

Kept in one place so that what ``python -m xnat_emulator`` serves by default and what the demo
mount shows are the same archive.
"""

from __future__ import annotations

from xnat_emulator.synthetic import SyntheticSpec

DEMO_SPEC = SyntheticSpec(projects=1, subjects=3, sessions=2, scans=3, dicoms=20,
                          dicom_size=64 << 10, niftis=1, nifti_size=8 << 20, bids=True)
DEMO_USER, DEMO_PASSWORD = "demo", "demo"
