"""``xnatfs demo``'s server side: the bundled emulator on a small synthetic archive, in the
mount's own process, and the banner that tells a first-time user what to try.

The emulator is imported only here and only when the demo runs, so that no other command pays
for it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

from xnatfs.xnat.client import XnatClient


def demo_client(timeout: float) -> XnatClient:
    """Start the emulator on a synthetic archive, in this process, and log in to it."""
    from xnat_emulator import Emulator, EmulatorConfig, synthetic_archive
    from xnat_emulator.demo import DEMO_PASSWORD, DEMO_SPEC, DEMO_USER
    from xnatfs.xnat.credentials import Credentials

    emulator = Emulator(synthetic_archive(DEMO_SPEC), EmulatorConfig(),
                        users={DEMO_USER: DEMO_PASSWORD})
    emulator.start()
    client = XnatClient(emulator.url, Credentials(DEMO_USER, DEMO_PASSWORD, source="demo"),
                        read_timeout=timeout, listing_timeout=timeout)
    client.login()
    return client


def demo_banner(client: XnatClient, where: str) -> str:
    from xnat_emulator.demo import DEMO_PASSWORD, DEMO_USER

    ids = sorted(p["ID"] for p in client.listing("/data/projects"))
    project = "PROJ01" if "PROJ01" in ids else ids[0]
    m = shlex.quote(where if where.startswith("/") else "./" + where)
    xnatfs = stop_command().removesuffix(" umount")
    lines = [
        f"xnatfs demo: a synthetic XNAT archive is mounted at {m}",
        f"(served by the bundled emulator at {client.base_url}, user {DEMO_USER}/{DEMO_PASSWORD})",
        "",
        "Try:",
        f"  ls {m}/{project}",
        f"  ls -lR {m}/{project} | head -40",
        f"  find {m} -name '*.nii*' -exec md5sum {{}} +",
        f"  cp -r {m}/{project}/<subject>/<session> /tmp/session",
        f"  du -sh {m}/{project}",
    ]
    if "BIDS01" in ids:
        lines += [
            "",
            "BIDS (project BIDS01): a dataset converted with dcm2niix where the server has only",
            "DICOM, reused where it has NIfTI with sidecars; then the lazy view of the latter:",
            f"  XNAT_PASS={DEMO_PASSWORD} {xnatfs} bids {client.base_url} BIDS01 -u {DEMO_USER} "
            "-o /tmp/bids",
            f"  {xnatfs} demo --bids /tmp/xnat-bids && ls -R /tmp/xnat-bids/BIDS01",
        ]
    return "\n".join([*lines, "", f"When done:  {stop_command()} {m}"])


def stop_command() -> str:
    """``xnatfs umount`` as the user's shell can run it. The README's set-up installs xnatfs in
    a virtualenv that is not on PATH, where a bare ``xnatfs`` is "command not found"; so name
    the script that is running, unless PATH finds that very script."""
    script = os.path.join(os.path.dirname(sys.executable), "xnatfs")
    found = shutil.which("xnatfs")
    if found and os.path.realpath(found) == os.path.realpath(script):
        return "xnatfs umount"
    if os.access(script, os.X_OK):
        return f"{shlex.quote(os.path.abspath(script))} umount"
    return f"{shlex.quote(sys.executable)} -m xnatfs umount"
