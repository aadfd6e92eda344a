#!/usr/bin/env bash
# Installs everything mntvm and its tests need on a fresh Debian machine (run as root), idempotently:
# Debian packages (cross compilers, binutils, the emulated-board tools, Chromium for report
# screenshots) and the Python package with its pinned TVM 0.27 + test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(
  g++-aarch64-linux-gnu      # aarch64 cross linker (ARM64 boards)
  g++-arm-linux-gnueabihf    # armv7 hard-float cross linker
  binutils                   # readelf, objdump (artifact checks: prefetch instructions in the model)
  debootstrap                # arm64 userland for the emulated board
  qemu-user-static           # runs it on x86
  chromium                   # headless screenshots of sweep reports
)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! $PY -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: mntvm needs Python 3.11 (apache-tvm 0.27 wheels); found $($PY --version)" >&2
  exit 1
fi
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test]"
echo "setup: ok ($($PY -c 'import tvm, tvm_ffi; print("tvm", tvm.__version__, "ffi", tvm_ffi.__version__)'))"
