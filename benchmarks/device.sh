#!/usr/bin/env bash
# Set-up for the GPU scripts on a bare device machine, whose image has PyTorch but not monai or nibabel.
#   here, once:  bash benchmarks/device.sh fetch   # the wheels into .whl/, the hippocampus data into .gpu_data/
#   there:       source benchmarks/device.sh       # installs .whl/*.whl into /tmp/site; sets PY and PYTHONPATH
# Both folders are git-ignored: name them in the device run's carry (about 20 MB together).
if [[ "${1:-}" == fetch ]]; then
  set -euo pipefail
  cd "$(dirname "$0")/.."
  py=${PY:-.venv/bin/python}
  versions=$("$py" -c 'import monai, nibabel; print(f"monai=={monai.__version__} nibabel=={nibabel.__version__}")')
  # pure-Python wheels: the same files work on the device's Python 3.12
  "$py" -m pip download -q --no-deps --only-binary=:all: -d .whl $versions
  data=${DATA:-../shared/data/hippocampus}
  mkdir -p .gpu_data && rm -rf .gpu_data/hippocampus && cp -rL "$data" .gpu_data/hippocampus && chmod -R u+w .gpu_data
  echo "fetched $versions into .whl/ and $data into .gpu_data/hippocampus"
else
  if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  export PYTHONPATH="/tmp/site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export PY=${PY:-python3}
fi
