#!/usr/bin/env bash
# Builds the ledgerci image from the working tree, with no registry and nothing fetched
# inside `docker build`:
#   1. the base image, made on this machine (deploy/base-image.sh) unless BASE_IMAGE names one;
#   2. wheels of ledgerci and its dependencies, built on the host (`pip wheel`, from PyPI or
#      pip's cache) into a fresh build context;
#   3. `docker build` of deploy/Dockerfile with the classic builder (no BuildKit needed).
#
#   deploy/build-image.sh [TAG]      # default ledgerci:latest; prints the tag when done
#
# PYTHON picks the host interpreter that builds the wheels (default: the repository's .venv);
# it must be the base image's Python version, since wheels with C extensions are built for one.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-ledgerci:latest}
base=${BASE_IMAGE:-$("$repo/deploy/base-image.sh")}
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3

host_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
base_version=$(docker run --rm --entrypoint python3 "$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$host_version" != "$base_version" ]; then
  echo "build-image.sh: $python is Python $host_version but $base has $base_version; set PYTHON" >&2
  exit 1
fi

context=$(mktemp -d /tmp/ledgerci-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
"$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$context/wheels" "$repo" >&2
# ledgerci's own wheel apart, so the dependencies' layer stays cached while the code changes.
mkdir "$context/app"
mv "$context"/wheels/ledgerci-*.whl "$context/app/"
previous=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
DOCKER_BUILDKIT=0 docker build --quiet --file "$repo/deploy/Dockerfile" --build-arg BASE_IMAGE="$base" \
  --tag "$tag" "$context" >&2
# The image this tag named before is now nameless: remove it (and its layers the new one does
# not share), or every rebuild would leave a few hundred MB behind. Still in use: it stays.
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
  docker rmi "$previous" >/dev/null 2>&1 || true
fi
# The classic builder leaves the build stage's image nameless too; the newest holds the
# dependencies' layer that the next build reuses, so only older ones go.
docker images --filter dangling=true --filter label=ledgerci.stage=build --format '{{.ID}}' | tail -n +2 \
  | xargs -r docker rmi >/dev/null 2>&1 || true
echo "$tag"
