#!/usr/bin/env bash
# `make colab-check`: the Colab install path, checked as far as it can be without Colab (issue 15).
#
#   scripts/colab_check.sh [WORKDIR]   # default: a new temporary directory; 10 to 30 minutes on 2 cores
#
# 1. A fresh virtualenv gets the packages of Colab's image that the install could replace under a
#    running kernel (COLAB_PACKAGES: the ipywidgets and the torch that Colab ships, and numpy, which torch
#    looks for; here torch==2.13.0 resolves to the CPU build on local disk).
# 2. A Python process plays Colab's kernel (requirements.lock's versions as pip's constraints): it imports
#    torch and ipywidgets (as a kernel that has already drawn a widget or made a tensor has), runs the
#    `%pip` line of notebook 00's setup cell the way `%pip` does (`python -m pip ...`), then
#    `setup("tiny")`, the cell's next call, and prints what it said.
#    GitHub is unreachable here, so the line's git URL (rlhflab.lab.notebook.INSTALL) is replaced by this
#    checkout: the same package, built from the working tree instead of the release tag.
# 3. As after a restart: notebook 00 runs headless in that virtualenv at QUICK settings
#    (`python -m rlhflab.lab.demo --quick`, the notebook that the install put in the package).
# 4. It says whether torch or ipywidgets changed version, and whether the notebook said so.
#
# Exit status: 0 when the install and the notebook worked and no library changed version silently.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d -t colab-check-XXXX)}
COLAB_PACKAGES=${COLAB_PACKAGES:-"ipywidgets==7.7.1 torch==2.13.0 numpy"}
PYTHON=${PYTHON:-python3}
VENV=$WORK/venv
started=$(date +%s)

echo "== 1. a fresh virtualenv with Colab's $COLAB_PACKAGES ($VENV)"
rm -rf "$VENV" "$WORK/quickstart"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# shellcheck disable=SC2086  # the package list splits on spaces
"$VENV/bin/pip" install --quiet $COLAB_PACKAGES
export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1  # the notebook's kernel is the virtualenv's python
# The install line resolves within the lab's locked versions (requirements.lock), as constraints: pip takes
# no hashes in a constraints file, and the lock's `torch==2.13.0+cpu` is the torch installed above.
sed -e '/--hash=/d' -e 's/ \\$//' "$ROOT/requirements.lock" > "$WORK/constraints.txt"
export PIP_CONSTRAINT="$WORK/constraints.txt"
cd "$WORK"  # not the checkout, whose rlhflab/ would shadow the installed package

echo "== 2. notebook 00's install line in a kernel that has loaded torch and ipywidgets"
python - "$ROOT" <<'EOF' | tee "$WORK/kernel.txt"
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import ipywidgets  # noqa: F401  loaded before the install cell, as in a kernel that has drawn a widget
import torch  # noqa: F401

root = Path(sys.argv[1])
cells = json.loads((root / "notebooks/00_quickstart.ipynb").read_text())["cells"]
setup_cell = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
line = next(l.strip() for l in setup_cell.splitlines() if l.strip().startswith("%pip install"))
colab = re.search(r'"(rlhflab @ git\+https://\S+)"', line).group(1)
here = line.replace(colab, f"rlhflab @ {root.as_uri()}")  # GitHub is unreachable here: this checkout instead
print(f"the setup cell runs: {line}\nhere, as %pip does: {here}", flush=True)
before = {name: sys.modules[name].__version__ for name in ("torch", "ipywidgets")}
subprocess.run([sys.executable, "-m", "pip", *shlex.split(here)[1:]], check=True)
from rlhflab.lab.notebook import INSTALL, setup  # noqa: E402

assert colab == INSTALL, f"the notebook installs {colab!r}, rlhflab.lab.notebook.INSTALL is {INSTALL!r}"
after = subprocess.run([sys.executable, "-c", "import torch, ipywidgets; print(torch.__version__, "
                        "ipywidgets.__version__)"], capture_output=True, text=True, check=True).stdout.split()
for (name, old), new in zip(before.items(), after):
    print(f"{name}: {old} -> {new}" if old != new else f"{name}: {old}, unchanged")
try:
    setup("tiny")
    print("the notebook said: nothing about a restart")
except RuntimeError as error:
    print(f"the notebook said: {error}")
EOF

echo "== 3. notebook 00 headless at QUICK settings, as after a restart"
python -m rlhflab.lab.demo --quick --out "$WORK/quickstart" > "$WORK/quickstart.log" 2>&1 \
    || { tail -40 "$WORK/quickstart.log"; echo "FAIL: notebook 00 did not run (log: $WORK/quickstart.log)"; exit 1; }
grep -h '"seconds"' "$WORK/quickstart.log"

echo "== 4. result"
changed=$(grep -E '^(torch|ipywidgets): .* -> ' "$WORK/kernel.txt" || true)
said=$(grep -c 'restart it' "$WORK/kernel.txt" || true)
echo "versions in the virtualenv now: $(python -c 'import torch, ipywidgets; print("torch", torch.__version__, "| ipywidgets", ipywidgets.__version__)')"
echo "wall time: $(( $(date +%s) - started )) s; files: $WORK"
if [ -z "$changed" ]; then
    echo "PASS: the install kept Colab's torch and ipywidgets, and notebook 00 ran at QUICK settings"
elif [ "$said" -gt 0 ]; then
    echo "PASS, with a restart: the install upgraded $(echo "$changed" | paste -sd ';' -), and setup told the user to restart; after it, notebook 00 ran at QUICK settings"
else
    echo "FAIL: the install upgraded $(echo "$changed" | paste -sd ';' -) without the notebook saying so"
    exit 1
fi
