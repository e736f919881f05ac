"""The hostile set: every awkward case a client must survive, in a few small projects.

Each case is something a real XNAT can hold (docs/xnat-api.md §11, §12): labels that are not
reachable by label in a URL, names a filesystem refuses, resources that share a label or
have none, catalogue entries without digest or size or without a file on disk, a subject
shared into a second project under another label, and projects the user may not read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xnat_emulator.archive import Access

if TYPE_CHECKING:
    from xnat_emulator.synthetic import _Builder

LONG_LABEL = "λ" * 140
"""280 bytes of UTF-8: longer than a file name may be (255 bytes)."""
LONG_NAME = "é" * 130 + ".dcm"


def add_hostile(build: _Builder) -> None:
    archive = build.archive
    size = build.spec.dicom_size
    hostile = archive.add_project("HOSTILE", "Hostile names", description="awkward cases")
    build.small_files(hostile, "docs", ["read me.txt", "notes/a+b.txt"])
    build.small_files(hostile, "", ["unlabelled.txt"])

    subject = archive.add_subject(hostile, "Subj With Space")
    build.small_files(subject, "CONSENT", ["consent form.pdf"])
    session = archive.add_experiment(subject, "Sess (1) %#", date="2023-02-19")

    scan = archive.add_scan(session, "1", "T1 MPRAGE")
    build.small_files(scan, "DICOM", ["1.dcm", "2.dcm"], format="DICOM")
    build.small_files(scan, "DICOM", ["1.dcm", "3.dcm"], format="DICOM")  # same label twice
    build.small_files(scan, "", ["orphan.dat"])  # unlabelled
    build.small_files(archive.add_scan(session, "2", "1"), "DICOM", ["1.dcm"])  # type "1"
    odd = archive.add_resource(archive.add_scan(session, "1-MR1", "CBF:Feb 16 2023 13-17-43 CST"),
                               "NIFTI")
    for name in ("anat/sub-01/T1w.nii.gz", "a+b (1).txt", "100%#.dat", "naïve 日本.dcm",
                 LONG_NAME):
        build.file(odd, name, size)
    build.file(odd, "no_digest.dcm", size, digest_listed=False)
    build.file(odd, "no_size.dcm", size, size_listed=False)
    build.file(odd, "missing.dcm", size, missing=True)
    build.small_files(archive.add_scan(session, "3", "a/b"), "DICOM", ["1.dcm"])
    build.small_files(session, "my res+1", ["sub dir/x y.txt"])
    build.small_files(session, "", ["session_orphan.txt"])
    stats = archive.add_resource(archive.add_assessor(session, "QC (1)"), "QC+1")
    build.file(stats, "stats/aseg stats.txt", size)
    archive.add_experiment(subject, "VARS", xsi_type="xnat:subjectVariablesData")

    for subject_label, session_label in (("plus+sign", "naïve_日本"), ("..", "."),
                                         ("a/b", "../../etc"), ("nul\x00inside", "x" * 300),
                                         ("A&B", "A&B_MR"), (LONG_LABEL, "long_MR")):
        other = archive.add_experiment(archive.add_subject(hostile, subject_label), session_label)
        build.small_files(archive.add_scan(other, "1", "T1w"), "DICOM", ["1.dcm"])

    shared = archive.add_project("SHARED", "Shared into", description="sharing target")
    archive.share(subject, shared, "Shared Subj")
    for n, experiment in enumerate(subject.experiments, 1):
        archive.share(experiment, shared, f"Shared Sess {n}")

    members = build.spec.members
    for project_id, access in (("PRIVATE", Access.PRIVATE), ("PROTECTED", Access.PROTECTED)):
        project = archive.add_project(project_id, f"{access.value} project", access=access,
                                      members=members)
        build.small_files(project, "docs", ["secret.txt"])
        restricted = archive.add_experiment(archive.add_subject(project, f"{project_id}_S1"),
                                            f"{project_id}_MR1")
        build.small_files(archive.add_scan(restricted, "1", "T1w"), "DICOM", ["1.dcm"])
