#!/usr/bin/env bash
# The seed's build-from-linux.sh for cfn: build the images on this machine, no registry.
#   scripts/build-images.sh                 # base (debootstrap), wheels, agent, orchestrator, redis
#   scripts/build-images.sh --image agent   # just one
#   scripts/build-images.sh --force         # rebuild the images even if up to date
# Uses DOCKER_HOST when set, otherwise starts cfn's own podman service.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/cfn ]; then
  echo "[ERROR] .venv/bin/cfn is missing: run scripts/bootstrap.sh first" >&2
  exit 1
fi
exec .venv/bin/cfn docker build "$@"
