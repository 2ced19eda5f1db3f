#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the pinned requirements; called by `make setup`,
# which skips it when the stamp for the current requirement files exists.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
# The machine's pip config lists extra local indexes; pip warns once per package they lack. Drop that noise.
pip_install() {
    $PIP install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

pip_install -r requirements/torch.txt
pip_install -r requirements/base.txt
pip_install --no-deps -r requirements/lvis.txt
if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('sal-detectron2') == '0.7.2'" 2>/dev/null; then
    pip_install --no-deps --upgrade --python-version 3.10 --only-binary=:all: --target "$SITE" -r requirements/detectron2.txt
fi
# opencv-python(-headless) would shadow the contrib build's cv2 (and its ximgproc module).
for shadow in opencv-python opencv-python-headless; do
    if $PIP show -q "$shadow" >/dev/null 2>&1; then
        $PIP uninstall -q -y "$shadow"
        pip_install --force-reinstall --no-deps "$(grep "^opencv-contrib" requirements/base.txt)"
    fi
done
pip_install --no-deps --no-build-isolation -e .

VENV_PY=$(cd "$VENV" && pwd)/bin/python
cd /  # the check must not depend on the working directory
"$VENV_PY" -c "import objpretrain, detectron2, cv2; cv2.ximgproc.segmentation; print('objpretrain environment ready')"
