#!/usr/bin/env bash
# Install everything cfn needs on a fresh Debian machine; safe to run again.
#   - Debian packages (redis-server, redis-tools) when missing
#   - a virtualenv at .venv with cfn and its dev tools (installed with uv),
#     reinstalled only when pyproject.toml changes
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# podman + runc serve the Docker API; debootstrap makes the base image; dnsname lets
# containers on a podman (CNI) network find each other by service name; bubblewrap
# is the sandbox of the commands an agent's model drives (cfn.system.sandbox).
APT_PACKAGES=(redis-server redis-tools postgresql chromium podman runc debootstrap
  golang-github-containernetworking-plugin-dnsname bubblewrap)

need=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    need+=("$pkg")
  fi
done
if ((${#need[@]})); then
  echo "[bootstrap] installing Debian packages: ${need[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when the package lists cannot offer what we need
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
  # Debian's package may start a system-wide redis-server where an init
  # system exists; cfn runs its own, so leave the system one alone.
fi

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PYTHON" -m venv --without-pip .venv
fi

# uv installs the ~100 packages in seconds where pip takes ~40 s (most of it
# unpacking and compiling one wheel after another); the system pip only puts uv
# itself into .venv. pip stays available in .venv for users, and is the fallback
# when uv cannot be had.
# uv is one static executable: a copy in the machine's cache (refreshed weekly) spares
# each fresh clone the ~4 s of starting pip to fetch it.
CACHE_DIR="${CFN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cfn}"
install_uv() {
  local cached="$CACHE_DIR/bin/uv"
  if [ -n "$(find "$cached" -mtime -7 2>/dev/null)" ] && "$cached" --version >/dev/null 2>&1; then
    cp "$cached" .venv/bin/uv && return 0
  fi
  "$PYTHON" -m pip --python .venv/bin/python install -q uv >/dev/null 2>&1 || return 1
  if mkdir -p "$CACHE_DIR/bin" 2>/dev/null && cp .venv/bin/uv "$cached.$$" 2>/dev/null; then
    mv -f "$cached.$$" "$cached"
  fi
  return 0
}

install_packages() {
  if [ ! -x .venv/bin/uv ]; then
    install_uv || return 1
  fi
  # uv reads none of pip's settings; pass on the certificate bundle pip is told to use
  if [ -n "${PIP_CERT:-}" ] && [ -z "${SSL_CERT_FILE:-}" ]; then
    export SSL_CERT_FILE="$PIP_CERT"
  fi
  .venv/bin/uv pip install -q --python .venv/bin/python pip -e '.[dev]'
}

stamp=.venv/.cfn-installed
want="$(sha256sum pyproject.toml | cut -c1-64)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing Python packages into .venv"
  if ! install_packages; then
    echo "[bootstrap] uv is unavailable; installing with pip"
    if [ ! -x .venv/bin/pip ]; then .venv/bin/python -m ensurepip -q; fi
    .venv/bin/python -m pip install -q -e '.[dev]'
  fi
  echo "$want" > "$stamp"
fi

# Machines of this kind set PYTHONDONTWRITEBYTECODE=1, so Python never caches what
# it imports: every cfn process (CLI command, agent, orchestrator, MCP server) would
# compile its modules from source again, seconds of CPU each. py_compile writes the
# caches regardless of that variable (scripts/compile_bytecode.py, once per install;
# compileall for cfn's own sources, skipping what is up to date). Left out, as no
# cfn process imports them: the LLM SDKs (two fifths of site-packages; one test
# worker imports them), pip and setuptools (image builds), mypy and mypyc (mypy
# runs its compiled extension modules, not the .py files beside them).
SKIP='/site-packages/(anthropic|openai|pip|setuptools|pkg_resources|_distutils_hack|mypy|mypyc)/'
if [ ! -f .venv/.cfn-compiled ] || [ "$(cat .venv/.cfn-compiled)" != "$want" ]; then
  .venv/bin/python scripts/compile_bytecode.py "$SKIP" .venv/lib/python3*/site-packages
  echo "$want" > .venv/.cfn-compiled
fi
.venv/bin/python -m compileall -q -j 0 src >/dev/null
