#!/usr/bin/env bash
# Install kdutils the way a user does and use it: build the wheel and the sdist
# (into $DIST), install the wheel into a fresh virtual environment outside the
# checkout, then, from a directory that is not the checkout, import it, list the
# methods and models, and train one tiny `digits` run.
#
# The fresh environment reuses the project venv's heavy dependencies (torch and
# the rest) through a .pth line, but not its editable kdutils: a path listed in
# a .pth file is put on sys.path without processing the .pth files inside it, so
# the editable install's hook never loads. The wheel goes in with --no-deps and
# the script checks that `import kdutils` comes from the fresh environment.
#
#   usage: scripts/check_install.sh PYTHON DIST
set -euo pipefail
py=$1
dist=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

rm -rf "$dist" && mkdir -p "$dist"
"$py" -m build --no-isolation --outdir "$dist" "$root" >"$dist/build.log" 2>&1 \
  || { cat "$dist/build.log" >&2; echo "check_install: the build failed" >&2; exit 1; }
wheel=$(ls "$dist"/kdutils-*.whl)
sdist=$(ls "$dist"/kdutils-*.tar.gz)
echo "built $(basename "$wheel") and $(basename "$sdist")"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/kd-install-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
"$py" -m venv "$scratch/venv"
site_new=$("$scratch/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
site_old=$("$py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$site_old" >"$site_new/kd-project-deps.pth"
"$scratch/venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps "$wheel"

# From an empty directory, with nothing of the checkout on the path.
mkdir -p "$scratch/work"
cd "$scratch/work"
unset PYTHONPATH
export KD_CACHE_DIR="$scratch/cache" MPLBACKEND=Agg
vpy="$scratch/venv/bin/python"
"$vpy" - "$scratch/venv" <<'EOF'
import sys
from pathlib import Path

import kdutils

where = Path(kdutils.__file__).resolve()
if not where.is_relative_to(Path(sys.argv[1]).resolve()):
    sys.exit(f"check_install: kdutils was imported from {where}, not from the wheel")
print(f"import kdutils: {where.parent}")
EOF
"$vpy" -m kdutils methods >"$scratch/methods.txt"
echo "python -m kdutils methods: $(($(wc -l <"$scratch/methods.txt") - 1)) lines"
"$vpy" -m kdutils models >"$scratch/models.txt"
echo "python -m kdutils models: $(($(wc -l <"$scratch/models.txt") - 1)) lines"
"$vpy" -m kdutils train --method kd --dataset digits --profile smoke \
  --teacher resnet8 --student resnet8 --epochs 1 --no-progress
echo "check_install: the wheel installs and works outside the checkout"
