# Sourced by .ci/run: a container engine for tests/deploy/test_compose.py on a Debian
# machine that has none.  podman, behind its Docker-compatible API, driven by
# docker-compose 1.29; every setting below was measured on the CI machine:
#   * runc and cgroupfs (no systemd inside), explicit ulimits (the defaults fail there);
#   * no image registry is reachable, so the base image is a bookworm made by mmdebstrap
#     from Debian's packages and imported (the Dockerfile takes it as BASE_IMAGE);
#   * `podman build --network host` with the host's CA bundle mounted (the test does it).
# On failure it only warns: the compose test then reports a skip with the reason.
# Exports DOCKER_HOST and WARREN_BASE_IMAGE.

engine_answers() {
    python3 - "$1" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
assert s.recv(64).startswith(b"HTTP/1.")
PY
}

warren_container_engine() {
    local sock=/run/podman/podman.sock base=localhost/warren-base:bookworm need=() pkg
    for pkg in podman runc docker-compose mmdebstrap netavark aardvark-dns uidmap \
               slirp4netns fuse-overlayfs; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if ((${#need[@]})); then
        apt-get update -q >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                "${need[@]}" >/dev/null || return 1
    fi
    mkdir -p /etc/containers/containers.conf.d
    cat >/etc/containers/containers.conf.d/warrenmq.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
CONF
    # A fresh service for every run, started from `/`: a service left by an earlier run
    # works in that run's directory, and once that clone was removed every container it
    # started failed ("[conmon:e] Failed to get working directory", then docker-compose's
    # "write child: broken pipe").  Then ask the service itself (the API's /_ping): a
    # socket file outlives a killed service, and `docker-compose version` answers without
    # asking the engine (CI once found a stale socket this way).
    pkill -f "podman system service.*$sock" 2>/dev/null && sleep 0.5
    rm -f "$sock"
    mkdir -p /run/podman
    (cd / && nohup podman system service --time=0 "unix://$sock" \
        >/tmp/podman-service.log 2>&1 &)
    local i
    for i in $(seq 100); do engine_answers "$sock" && break; sleep 0.2; done
    engine_answers "$sock" || { echo "podman service did not answer on $sock"; return 1; }
    if ! podman image exists "$base"; then
        local t0=$SECONDS
        mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            bookworm - | podman import --quiet - "$base" >/dev/null || return 1
        echo "container engine: base image $base built in $((SECONDS - t0)) s"
    fi
    export DOCKER_HOST=unix://$sock WARREN_BASE_IMAGE=$base
}

if ! warren_container_engine; then
    echo "WARNING: no container engine could be set up; the compose test will report a skip"
fi
