#!/usr/bin/env bash
# The one install recipe: `make setup` runs it on a developer machine and CI, the Dockerfile
# runs it in the image's builder stage, so CI exercises the container's install steps.
#
# usage: scripts/install.sh PYTHON LOCK [PIP-ARGS...]
#   PYTHON       interpreter of the target virtual environment (it must exist)
#   LOCK         the lock file: every distribution pinned (requirements.lock, from `make lock`)
#   PIP-ARGS     recflow itself, installed last with --no-deps: `-e .[dev]` for development,
#                a wheel file in the image; none installs the dependencies only
# environment:
#   TORCH_INDEX_URL  index torch comes from, e.g. https://download.pytorch.org/whl/cpu where the
#                    CPU wheel is not on local disk; empty: pip's own configuration
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '5,12p' "$0" >&2
    exit 2
fi
python=$1
lock=$2
shift 2
pip=("$python" -m pip --quiet --disable-pip-version-check)

"${pip[@]}" install --upgrade pip
# torch first and alone, at the lock's version without its local label (torch==2.13.0 for
# 2.13.0+cpu): pip's configuration or TORCH_INDEX_URL picks the CPU build. From plain PyPI, Linux
# would get the CUDA build, which the lock's +cpu pin then refuses. Its dependencies come from
# the lock, never from the torch index.
torch_pin=$(grep -E '^torch==' "$lock") || {
    echo "$lock pins no torch" >&2
    exit 1
}
"${pip[@]}" install --no-deps ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${torch_pin%%+*}"
"${pip[@]}" install -r "$lock"
if [[ $# -gt 0 ]]; then
    "${pip[@]}" install --no-deps "$@"
fi
# Every requirement of every installed distribution met: catches a dependency that pyproject
# declares and the lock lacks.
"${pip[@]}" check
