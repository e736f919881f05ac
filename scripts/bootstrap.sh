#!/usr/bin/env bash
# Set up xnatfs on a fresh Debian/Ubuntu machine, then run the demo or the test suite.
#   scripts/bootstrap.sh demo    # emulator + mount, prints what to try
#   scripts/bootstrap.sh test    # ruff + the whole pytest suite (real FUSE mounts, real git-annex)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-demo}
shift || true

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3' || missing+=(libfuse3-3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v curl >/dev/null || missing+=(curl)
command -v git-annex >/dev/null || missing+=(git-annex)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "bootstrap: xnatfs needs Python 3.11 or newer" >&2; exit 1; }

[ -x .venv/bin/python ] || python3 -m venv .venv
# pip's chatter (index warnings, build notices) is shown only if the install fails
if ! log=$(.venv/bin/python -m pip install -q --upgrade pip 2>&1 &&
           .venv/bin/python -m pip install -q -e ".[test]" 2>&1); then
    printf '%s\n' "$log" >&2
    echo "bootstrap: installing xnatfs into .venv failed" >&2
    exit 1
fi
# Snakemake finds storage plugins with pkgutil.iter_modules, which cannot see the import hook
# of an editable install: put the folder that holds only the plugin on the venv's path.
.venv/bin/python - <<'PY'
import pathlib, sysconfig
site = pathlib.Path(sysconfig.get_path("purelib"))
(site / "xnatfs-snakemake-plugin.pth").write_text(str(pathlib.Path("xnatfs/snakemake").resolve()) + "\n")
PY

case "$mode" in
    demo) exec .venv/bin/xnatfs demo "$@" ;;
    test)
        .venv/bin/ruff check xnatfs xnat_emulator tests scripts
        exec .venv/bin/python -m pytest -q "$@" ;;
    *) echo "usage: scripts/bootstrap.sh demo|test [ARGS...]" >&2; exit 2 ;;
esac
