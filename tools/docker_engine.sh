#!/usr/bin/env bash
# A Docker engine for the container test tier (docs/deploy.md, `make test-containers`).
#
#   tools/docker_engine.sh ensure   # use the engine DOCKER_HOST (or the default socket) names;
#                                   # when none answers: install Engine >= 25 + buildx (root,
#                                   # Debian 12) and start a dockerd of our own
#   tools/docker_engine.sh base     # build the offline stand-in for the Python base image
#   tools/docker_engine.sh stop     # stop the dockerd this script started (if any)
#
# Why each piece exists:
# - Debian 12's docker.io is Engine 20.10: Compose refuses healthcheck.start_interval (needs
#   Engine >= 25) and it has no buildx. Debian 13's docker.io/docker-cli/docker-buildx install on
#   Debian 12 from the same mirror; an apt preference lets only those three come from trixie.
# - There is no service manager in CI machines' containers, so dockerd is started here, in the
#   background, with its log in $DOCKER_ENGINE_LOG; its data root persists between runs so image
#   layers and the BuildKit pip cache are reused.
# - Without a registry, `python:3.11.14-slim-bookworm` cannot be pulled. `base` builds the same
#   distribution (Debian 12, Python 3.11) with debootstrap from the machine's apt mirror and
#   imports it as $BASE_IMAGE, with pip and a `python` command as the official image has. The
#   tier passes it as the Dockerfile's PYTHON_IMAGE build argument; users keep the official one.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-mnist-serving-base:python3.11-bookworm}
DOCKER_DATA_ROOT=${DOCKER_DATA_ROOT:-/var/lib/docker}
DOCKER_ENGINE_LOG=${DOCKER_ENGINE_LOG:-/var/log/mnist-serving-dockerd.log}
DOCKER_ENGINE_PIDFILE=${DOCKER_ENGINE_PIDFILE:-/run/mnist-serving-dockerd.pid}
MIN_ENGINE_MAJOR=25

log() { printf 'docker_engine: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

engine_answers() { docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

engine_major() { docker version --format '{{.Server.Version}}' 2>/dev/null | cut -d. -f1; }

# The Debian mirror this machine's apt uses (debootstrap and the trixie source use the same one).
debian_mirror() {
    local uri
    uri=$(grep -rhoE '^(URIs:[[:space:]]*|deb[[:space:]]+)[a-z]+://[^[:space:]]+/debian/?([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -oE '[a-z]+://[^[:space:]]+' | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

install_engine() {
    [ "$(id -u)" = 0 ] || die "no Docker engine answers and installing one needs root"
    [ -r /etc/debian_version ] && grep -q '^12' /etc/debian_version \
        || die "no Docker engine answers; automatic install supports Debian 12 only"
    local mirror
    mirror=$(debian_mirror)
    log "installing Docker Engine (Debian 13 packages) and debootstrap from $mirror"
    cat >/etc/apt/sources.list.d/mnist-serving-trixie.sources <<EOF
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Nothing else may come from trixie: priority 1 never upgrades or installs an installed
    # bookworm package; the three Docker packages are preferred from it.
    cat >/etc/apt/preferences.d/mnist-serving-trixie <<'EOF'
Package: *
Pin: release n=trixie
Pin-Priority: 1

Package: docker.io docker-cli docker-buildx
Pin: release n=trixie
Pin-Priority: 990
EOF
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        docker.io docker-cli docker-buildx debootstrap iptables >/dev/null
}

start_engine() {
    local sock=/var/run/docker.sock
    if [ -n "${DOCKER_HOST:-}" ]; then
        case $DOCKER_HOST in
            unix://*) sock=${DOCKER_HOST#unix://} ;;
            *) die "DOCKER_HOST=$DOCKER_HOST does not answer and is not a local socket to start" ;;
        esac
    fi
    mkdir -p "$DOCKER_DATA_ROOT" "$(dirname "$DOCKER_ENGINE_LOG")"
    log "starting dockerd (data root $DOCKER_DATA_ROOT, socket $sock, log $DOCKER_ENGINE_LOG)"
    # setsid: the engine outlives this script (and make's process group) until `stop`.
    setsid /usr/sbin/dockerd --data-root "$DOCKER_DATA_ROOT" --host "unix://$sock" \
        --pidfile "$DOCKER_ENGINE_PIDFILE" >>"$DOCKER_ENGINE_LOG" 2>&1 </dev/null &
    local _
    for _ in $(seq 60); do
        engine_answers && return 0
        sleep 1
    done
    tail -n 30 "$DOCKER_ENGINE_LOG" >&2 || true
    die "dockerd did not answer within 60 s"
}

cmd_ensure() {
    if ! engine_answers; then
        if [ ! -x /usr/sbin/dockerd ] || ! docker buildx version >/dev/null 2>&1 \
            || [ "$(/usr/sbin/dockerd --version | grep -oE '[0-9]+' | head -n1)" -lt "$MIN_ENGINE_MAJOR" ]; then
            install_engine
        fi
        start_engine
    fi
    local major
    major=$(engine_major)
    [ "${major:-0}" -ge "$MIN_ENGINE_MAJOR" ] \
        || die "Docker Engine $(docker version --format '{{.Server.Version}}') is too old (need >= $MIN_ENGINE_MAJOR for healthcheck start_interval)"
    docker buildx version >/dev/null 2>&1 || die "the docker client finds no buildx plugin"
    log "engine $(docker version --format '{{.Server.Version}}') answers; $(docker buildx version)"
}

cmd_base() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE exists"
        return 0
    fi
    command -v debootstrap >/dev/null || die "debootstrap is not installed (run ensure as root)"
    local root mirror
    root=$(mktemp -d /var/tmp/mnist-serving-base.XXXXXX)
    # shellcheck disable=SC2064  # expand now: $root is local to this function
    trap "rm -rf '$root'" EXIT
    mirror=$(debian_mirror)
    log "debootstrap bookworm from $mirror into $root"
    # python3-pip and python-is-python3: the official image's `python` and `python -m pip`.
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$root" "$mirror" >/dev/null
    # What the official image's configuration provides besides the files (an imported
    # tarball has no PATH); apt lists and caches are not needed in the image.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "Debian 12 minbase + Python 3.11 (debootstrap), stand-in for python:3.11-slim-bookworm" \
        - "$BASE_IMAGE" >/dev/null
    log "built $BASE_IMAGE: $(docker run --rm "$BASE_IMAGE" python -c 'import sys, pip; print(sys.version.split()[0], "pip", pip.__version__)')"
}

cmd_stop() {
    if [ -r "$DOCKER_ENGINE_PIDFILE" ]; then
        local pid
        pid=$(cat "$DOCKER_ENGINE_PIDFILE")
        log "stopping dockerd $pid"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
        die "dockerd $pid did not stop"
    fi
}

case ${1:-} in
    ensure) cmd_ensure ;;
    base) cmd_base ;;
    stop) cmd_stop ;;
    *) echo "usage: $0 ensure|base|stop" >&2; exit 2 ;;
esac
