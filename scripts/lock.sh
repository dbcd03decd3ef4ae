#!/usr/bin/env bash
# Regenerates requirements.lock from a fresh resolve: a new venv gets torch, then recflow with
# its dev extra under constraints.txt, and the lock is that venv's `pip freeze` (pip and recflow
# itself left out). Run by `make lock`; commit the result.
#
# usage: scripts/lock.sh PYTHON-3.11 OUT
# environment: TORCH_INDEX_URL as for scripts/install.sh
set -euo pipefail

if [[ $# -ne 2 ]]; then
    sed -n '2,7p' "$0" >&2
    exit 2
fi
base=$1
out=$2
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$base" -m venv "$venv"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install --upgrade pip
torch_pin=$(grep -E '^torch==' constraints.txt)
"${pip[@]}" install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$torch_pin"
"${pip[@]}" install -c constraints.txt -e ".[dev]"
"${pip[@]}" check
frozen=$("$venv/bin/python" -m pip freeze --all --exclude-editable --exclude pip)
# A CUDA build of torch drags in nvidia-* wheels (gigabytes, and useless on CPU-only hosts).
if grep -iE '^(nvidia-|triton==)' <<<"$frozen"; then
    echo "the resolve pulled CUDA packages (above): torch must be the CPU build" >&2
    exit 1
fi
grep -qE '^torch==[^ ]*\+cpu$' <<<"$frozen" || {
    echo "torch is not the CPU build: $(grep -E '^torch==' <<<"$frozen")" >&2
    exit 1
}
{
    echo "# Every distribution recflow installs, pinned: \`make setup\` and the Dockerfile install"
    echo "# from this file (scripts/install.sh). Regenerate with \`make lock\` after changing"
    echo "# pyproject.toml or constraints.txt. Resolved for CPython 3.11 on Linux x86_64, CPU torch."
    echo "$frozen"
} >"$out"
echo "wrote $out ($(grep -cv '^#' "$out") pins)"
