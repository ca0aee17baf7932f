#!/usr/bin/env bash
# Smoke test of the Docker image, opt-in (the build downloads gigabytes; it is not part of the test command).
#
#   bash scripts/docker_smoke.sh          # as root, or as a user in the docker group
#
# Builds the image, then runs in containers, as the calling user: `bandistill models`, the README's digits demo
# with --out on a mounted host folder, and `bandistill ensemble` on the demo's ONNX generations. Then it checks
# on the host that the demo's files are there, are what they claim to be, and belong to the caller (not root),
# and that the CA bundle handed to the build is in no layer of the image. Exit 0 only if everything passed.
#
# Settings (environment):
#   DOCKER      docker client (default: docker). It must build with BuildKit: the buildx plugin, or Docker 20.10
#               (Debian's docker.io), which this script runs with DOCKER_BUILDKIT=1.
#   BASE_IMAGE  base image (default: the Dockerfile's, python:3.11-slim-bookworm). When that cannot be pulled
#               (no Docker Hub), a Debian bookworm base made here with debootstrap, bandistill-base:bookworm
#               (needs root and debootstrap once; reused afterwards).
#   CA_BUNDLE   extra CA bundle for pip inside the build, passed as a BuildKit secret (default: $PIP_CERT, the
#               bundle pip on this host is told to use; empty for none).
#   IMAGE       tag to build (default: bandistill:smoke).
#   SMOKE_DIR   host folder mounted at /work (default: a new folder under /tmp; it is kept for inspection).
#   RUN_USER    uid:gid inside the container (default: the caller's; for root, 4242:4242, a uid the image does
#               not know, because root-owned output is what this guards against).
set -euo pipefail
cd "$(dirname "$0")/.."

# The README's demo command (tests/test_packaging.py keeps the two the same).
DEMO="ban --model resnet-20 --dataset digits --generations 3 --epochs 30 --out runs/demo"
OFFICIAL_BASE=python:3.11-slim-bookworm
LOCAL_BASE=bandistill-base:bookworm

DOCKER=${DOCKER:-docker}
IMAGE=${IMAGE:-bandistill:smoke}
CA_BUNDLE=${CA_BUNDLE-${PIP_CERT:-}}
if [ "$(id -u)" = 0 ]; then RUN_USER=${RUN_USER:-4242:4242}; else RUN_USER=${RUN_USER:-$(id -u):$(id -g)}; fi
RUN_UID=${RUN_USER%%:*}

say() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'docker_smoke: FAILED: %s\n' "$*" >&2; exit 1; }

"$DOCKER" info >/dev/null 2>&1 || fail "'$DOCKER info' fails: start dockerd, or join the docker group"

# BuildKit: with the buildx plugin `docker build` uses it; Docker 20.10's client has it built in behind
# DOCKER_BUILDKIT=1; a newer client without buildx has neither.
client=$("$DOCKER" version --format '{{.Client.Version}}')
if "$DOCKER" buildx version >/dev/null 2>&1; then
    build=("$DOCKER" build)
elif [ "${client%%.*}" -lt 23 ]; then
    build=(env DOCKER_BUILDKIT=1 "$DOCKER" build)
else
    fail "docker $client has no buildx plugin, so it cannot build with BuildKit: install docker-buildx, or set DOCKER= to a client that can (Debian's docker.io: DOCKER=/usr/bin/docker)"
fi

say "base image"
if [ -z "${BASE_IMAGE:-}" ]; then
    if "$DOCKER" image inspect "$OFFICIAL_BASE" >/dev/null 2>&1 || timeout 120 "$DOCKER" pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
        BASE_IMAGE=$OFFICIAL_BASE
    else
        echo "$OFFICIAL_BASE cannot be pulled; using $LOCAL_BASE, a Debian base made here" >&2
        if ! "$DOCKER" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
            if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null; then
                fail "$LOCAL_BASE does not exist and making it needs root and debootstrap (apt-get install debootstrap)"
            fi
            start=$SECONDS
            rootfs=$(mktemp -d /tmp/bandistill-rootfs.XXXXXX)
            debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
                bookworm "$rootfs" >"$rootfs.log" 2>&1 || fail "debootstrap failed, see $rootfs.log"
            # an imported tarball has no ENV: give it the PATH and locale a Debian image has
            tar -C "$rootfs" -c . | "$DOCKER" import \
                --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
                --change 'ENV LANG=C.UTF-8' - "$LOCAL_BASE" >/dev/null
            rm -rf "$rootfs" "$rootfs.log"
            echo "made $LOCAL_BASE in $((SECONDS - start)) s" >&2
        fi
        BASE_IMAGE=$LOCAL_BASE
    fi
fi
echo "base: $BASE_IMAGE ($("$DOCKER" image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))" >&2

say "build $IMAGE"
secret=()
if [ -n "$CA_BUNDLE" ]; then
    [ -s "$CA_BUNDLE" ] || fail "CA_BUNDLE=$CA_BUNDLE is not a readable file"
    secret=(--secret "id=ca,src=$CA_BUNDLE")
    echo "CA bundle for pip: $CA_BUNDLE (BuildKit secret)" >&2
fi
start=$SECONDS
"${build[@]}" --progress=plain --build-arg "BASE_IMAGE=$BASE_IMAGE" "${secret[@]}" -t "$IMAGE" . >&2
build_s=$((SECONDS - start))
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
echo "built $IMAGE in $build_s s: $size bytes" >&2

say "the CA bundle is in no layer"
# a secret is mounted at /run/secrets/<id> during its RUN only; the image must hold no such file in any layer
# and no PIP_CERT in its environment
if [ -n "$CA_BUNDLE" ]; then
    leaked=$("$DOCKER" save "$IMAGE" | tar -xO --wildcards '*/layer.tar' | tar -tvi | awk '$3 > 0 && $NF ~ /^(\.\/)?run\/secrets\//')
    [ -z "$leaked" ] || fail "the image holds secret files: $leaked"
    "$DOCKER" image inspect -f '{{json .Config.Env}}' "$IMAGE" | grep -q PIP_CERT && fail "PIP_CERT is in the image's environment"
    # and no copy of it anywhere in the container's file system (files of its size, compared by digest)
    digest=$(sha256sum <"$CA_BUNDLE" | cut -d' ' -f1)
    same_size=$("$DOCKER" run --rm --user 0 --entrypoint sh "$IMAGE" -c \
        "find / -xdev -type f -size $(stat -L -c %s "$CA_BUNDLE")c -exec sha256sum {} +")
    case "$same_size" in *"$digest"*) fail "a copy of $CA_BUNDLE is in the image: $same_size" ;; esac
    echo "no file under run/secrets/ with content in any layer, no PIP_CERT in the image's environment, no copy of $CA_BUNDLE in its file system" >&2
else
    echo "(no CA bundle given: nothing to check)" >&2
fi

SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d /tmp/bandistill-smoke.XXXXXX)}
mkdir -p "$SMOKE_DIR"
[ "$(id -u)" = 0 ] && chown "$RUN_USER" "$SMOKE_DIR"
[ -e "$SMOKE_DIR/runs" ] && fail "$SMOKE_DIR/runs exists: give SMOKE_DIR an empty folder"
# OMP_NUM_THREADS=1: the demo trains with torch; on a shared CPU, one thread per process
run=("$DOCKER" run --rm --user "$RUN_USER" -e OMP_NUM_THREADS=1 -v "$SMOKE_DIR:/work" "$IMAGE")

say "bandistill models (as $RUN_USER)"
"${run[@]}" models

say "bandistill $DEMO (host folder $SMOKE_DIR mounted at /work)"
start=$SECONDS
# shellcheck disable=SC2086  # DEMO is a command line, split on purpose
"${run[@]}" $DEMO
demo_s=$((SECONDS - start))

say "bandistill ensemble --onnx '/work/runs/demo/onnx/gen*.onnx'"
"${run[@]}" ensemble --onnx '/work/runs/demo/onnx/gen*.onnx'

say "on the host: the demo's files"
out=$SMOKE_DIR/runs/demo
expected=(gen0/model.pt gen1/model.pt gen2/model.pt gen3/model.pt gen0/metrics.jsonl gen3/metrics.jsonl
          cache/gen0.h5 cache/gen1.h5 cache/gen2.h5
          onnx/gen0.onnx onnx/gen1.onnx onnx/gen2.onnx onnx/gen3.onnx bane.onnx
          evaluation.json manifest.json report.json report.md report.png)
for f in "${expected[@]}"; do
    [ -s "$out/$f" ] || fail "$out/$f is missing or empty"
    owner=$(stat -c %u "$out/$f")
    [ "$owner" = "$RUN_UID" ] || fail "$out/$f belongs to uid $owner, not $RUN_UID"
done
strangers=$(find "$SMOKE_DIR/runs" ! -uid "$RUN_UID")
[ -z "$strangers" ] || fail "not owned by uid $RUN_UID: $strangers"
for f in evaluation.json manifest.json report.json; do
    python3 -m json.tool "$out/$f" >/dev/null || fail "$out/$f is not JSON"
done
[ "$(head -c 8 "$out/report.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "report.png is not a PNG"
[ "$(head -c 8 "$out/cache/gen0.h5" | od -An -tx1 | tr -d ' \n')" = 894844460d0a1a0a ] || fail "cache/gen0.h5 is not HDF5"
grep -q 'BAN-3' "$out/report.md" || fail "report.md has no BAN-3 column"
(cd "$out" && ls -ln "${expected[@]}")
echo "all $(find "$SMOKE_DIR/runs" | wc -l) paths under $SMOKE_DIR/runs belong to uid $RUN_UID" >&2

say "passed"
printf 'build %d s, image %s (%.2f GB), demo %d s in the container, outputs in %s\n' \
    "$build_s" "$IMAGE" "$(awk -v s="$size" 'BEGIN{print s/1e9}')" "$demo_s" "$out"
