#!/usr/bin/env bash
# Build the Dockerfile with podman and run the image for real (CI calls this from .ci/run).
#
#   deploy/container-check.sh
#
# No image registry is reachable here, so the base image is made locally: debootstrap a minimal
# Debian bookworm with python3 from the mirror apt already uses (read from apt's own sources),
# `podman import` it, and build the real Dockerfile on it with --build-arg PYTHON_IMAGE=... .
# Package downloads during the build go through the host's pip configuration and CA bundle,
# bind-mounted read-only into the build (never copied into the image; checked below).
# Then, with --network host: the sandbox and the proxy as two containers, a file uploaded and
# downloaded through the proxy (sha256 compared), the proxy's uid, /readyz, the HEALTHCHECK,
# SIGTERM -> exit 0, and no compiler, pip cache or source tree in the image. All containers,
# images and podman storage live under one temporary directory that is removed at the end.
#
# podman runs as root with runc (crun fails on this machine's cgroup layout), cgroupfs,
# file events and ulimits no higher than the machine's hard limits, from a containers.conf
# written at run time (named by CONTAINERS_CONF) plus --root/--runroot on every call.
#
# Environment: PYTHON (default python3) reads the host's pip configuration;
# BASE_CACHE (default /var/cache/aspose-proxy-ci) keeps the debootstrap tarball for a week,
# BASE_CACHE= (empty) disables the cache.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
PYTHON="${PYTHON:-python3}"
BASE_CACHE="${BASE_CACHE-/var/cache/aspose-proxy-ci}"
SUITE=bookworm
INCLUDE=python3,python3-venv,python-is-python3,ca-certificates
UID_EXPECTED=10001

say() { printf '==> container-check: %s\n' "$*"; }
fail() {
    printf 'container-check: FAIL: %s\n' "$*" >&2
    exit 1
}

missing=()
for tool in podman buildah runc debootstrap curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    say "SKIPPED: ${missing[*]} not installed (apt-get install podman buildah runc debootstrap curl)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "SKIPPED: needs root (podman with runc and cgroupfs, debootstrap)"
    exit 0
fi

work="$(mktemp -d /var/tmp/aspose-container-check.XXXXXX)"
tag="$(basename "$work" | tr 'A-Z.' 'a-z-')"
base_image="localhost/${tag}-python:${SUITE}"
image="localhost/${tag}:test"
containers=()

# containers.conf: ulimits no higher than this machine's hard limits (podman's defaults may be).
nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] && nofile=1048576
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$work/events.log"
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"

PM=(podman --root "$work/storage" --runroot "$work/run" --tmpdir "$work/tmp" --storage-driver overlay)
pm() { "${PM[@]}" "$@"; }

cleanup() {
    local code=$?
    set +e
    for c in "${containers[@]}"; do
        if [ "$code" != 0 ]; then
            echo "---- logs of $c (last 40 lines)"
            pm logs --tail 40 "$c" 2>&1
        fi
        pm rm -f -t 0 "$c" >/dev/null 2>&1
    done
    pm rmi -f "$image" "$image-build" "$base_image" >/dev/null 2>&1
    # Everything left in this private store (not `system reset`: that also drops the machine's
    # podman networks), then whatever is still mounted under it, then the directory.
    pm rm -a -f -t 0 >/dev/null 2>&1
    pm rmi -a -f >/dev/null 2>&1
    pm volume rm -a -f >/dev/null 2>&1
    awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r |
        xargs -r umount -l 2>/dev/null
    rm -rf "$work"
    say "removed containers, images and storage ($work)"
    say "took $((SECONDS - started)) s"
    exit "$code"
}
trap cleanup EXIT

# ---------------------------------------------------------------- the base image (debootstrap)
apt_mirror() {
    # shellcheck disable=SC2016  # $(RELEASE) and $(REPO_URI) are apt's placeholders
    apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Created-By: Packages' 2>/dev/null |
        awk -v suite="$SUITE" '$1 == suite { print $2; exit }'
}
mirror="$(apt_mirror)"
if [ -z "$mirror" ]; then # apt lists only its downloaded indexes: fetch them once
    apt-get update -qq >/dev/null 2>&1 || true
    mirror="$(apt_mirror)"
fi
[ -n "$mirror" ] || fail "no '$SUITE' source in apt's configuration (apt-get indextargets)"

key="$(printf '%s %s %s' "$SUITE" "$INCLUDE" "$mirror" | sha256sum | cut -c1-12)"
cached="${BASE_CACHE:+$BASE_CACHE/python-base-$SUITE-$key.tar}"
if [ -n "$cached" ] && [ -n "$(find "$cached" -mtime -7 2>/dev/null)" ]; then
    say "base image from the cache: $cached"
    tarball="$cached"
else
    say "debootstrap --variant=minbase $SUITE from apt's mirror (about a minute)"
    rootfs="$work/rootfs"
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$mirror" \
        >"$work/debootstrap.log" 2>&1; then
        tail -30 "$work/debootstrap.log" >&2
        fail "debootstrap failed"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    tarball="$work/base.tar"
    tar --numeric-owner -C "$rootfs" -cf "$tarball" .
    rm -rf "$rootfs"
    if [ -n "$cached" ] && mkdir -p "$BASE_CACHE" 2>/dev/null; then
        cp "$tarball" "$cached.part" && mv "$cached.part" "$cached" && say "cached the base in $cached"
        find "$BASE_CACHE" -name "python-base-*.tar" ! -newer "$cached" ! -path "$cached" -delete
    fi
fi
pm import --quiet --change 'CMD ["python3"]' "$tarball" "$base_image" >/dev/null

# ---------------------------------------------------------------- the host's pip configuration
# One pip.conf with the host's effective settings (files and PIP_* variables, as `pip config
# list` shows them), mounted at /etc/pip.conf; each file or directory it names is mounted
# read-only at the same path. The CA bundle is always mounted and always named.
mounts=()
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] && mounts+=(-v "$ca:$ca:ro")
pipconf="$work/pip.conf"
"$PYTHON" - "$pipconf" "$ca" >"$work/pip-paths" <<'PYEOF'
import os, re, subprocess, sys
from urllib.parse import urlparse

out, ca = sys.argv[1], sys.argv[2]
listed = subprocess.run(
    [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
).stdout
sections: dict[str, dict[str, str]] = {}
for line in listed.splitlines():
    match = re.match(r"^([^.=]*)\.([^=]+)='(.*)'$", line)
    if not match:
        continue
    section, key, value = match.groups()
    # ":env:" entries are PIP_* variables; they win over files, so they are applied last below.
    sections.setdefault("global" if section == ":env:" else section, {})
    if section != ":env:":
        sections[section].setdefault(key, value)
for line in listed.splitlines():
    match = re.match(r"^:env:\.([^=]+)='(.*)'$", line)
    if match:
        sections["global"][match.group(1)] = match.group(2)
sections.setdefault("global", {}).setdefault("cert", ca)
sections["global"].pop("cache-dir", None)  # the build writes no cache (--no-cache-dir)
paths = set()
with open(out, "w", encoding="utf-8") as conf:
    for section, values in sections.items():
        conf.write(f"[{section}]\n")
        for key, value in values.items():
            kept = []
            for word in value.split():
                path = urlparse(word).path if word.startswith("file:") else word
                if word.startswith("file:") and path.rstrip("/").endswith("/simple"):
                    path = os.path.dirname(path.rstrip("/"))  # its pages link to ../files
                if path.startswith("/"):
                    if not os.path.exists(path):
                        continue  # a local path the build cannot see: leave it out
                    paths.add(path)
                kept.append(word)
            if kept or not value.split():
                conf.write(f"{key} = {' '.join(kept)}\n")
print("\n".join(sorted(paths)))
PYEOF
while IFS= read -r path; do
    [ -n "$path" ] && [ "$path" != "$ca" ] && mounts+=(-v "$path:$path:ro")
done <"$work/pip-paths"
mounts+=(-v "$pipconf:/etc/pip.conf:ro")
say "build mounts: ${mounts[*]}"

# ---------------------------------------------------------------- build
# Two passes: the build stage with the mounts, then the whole file without them (the build
# stage comes from the layer cache). `podman build -v` applies to every RUN, and this buildah
# leaves the mount points it creates (an empty /etc/pip.conf, ...) in the runtime stage's layer.
# Both passes build one snapshot of the working tree (tracked and new files, not ignored ones),
# so that an edit made meanwhile cannot make the second pass miss the cache.
context="$work/context"
mkdir "$context"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        (while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) |
        tar --null -T - -cf - | tar -C "$context" -xf -
else
    tar --exclude=./.git --exclude=./.venv -cf - . | tar -C "$context" -xf -
fi
build() {
    pm build --format docker --network host --pull=never --build-arg "PYTHON_IMAGE=$base_image" \
        "$@" "$context" >>"$work/build.log" 2>&1 || {
        tail -40 "$work/build.log" >&2
        fail "podman build $* failed"
    }
}
say "podman build --format docker (FROM $base_image)"
build_started=$SECONDS
build "${mounts[@]}" --target build -t "$image-build"
build -t "$image"
pm rmi "$image-build" >/dev/null
say "built in $((SECONDS - build_started)) s"

# ---------------------------------------------------------------- what the image holds
[[ "$(pm image inspect --format '{{.Config.Healthcheck}}' "$image")" == *healthz* ]] ||
    fail "the image lost its HEALTHCHECK (build with --format docker)"
user="$(pm image inspect --format '{{.Config.User}}' "$image")"
[ "${user%%:*}" = "$UID_EXPECTED" ] || fail "image user is '$user', expected $UID_EXPECTED"

# shellcheck disable=SC2016  # run by the container's shell
inspect_script='
set -u
bad=""
for tool in gcc cc c++ g++ clang make; do
    command -v "$tool" >/dev/null 2>&1 && bad="$bad compiler:$tool"
done
for dir in /usr/lib/gcc /usr/libexec/gcc; do [ -e "$dir" ] && bad="$bad compiler:$dir"; done
[ -e /src ] && bad="$bad source-tree:/src"
[ -e /opt/venv/src ] && bad="$bad source-tree:/opt/venv/src"
found="$(find / -xdev -path "*/.cache/pip" 2>/dev/null)"
[ -n "$found" ] && bad="$bad pip-cache:$found"
owner="$(stat -c %u /var/lib/aspose-proxy 2>/dev/null)"
[ "$owner" = 10001 ] || bad="$bad state-dir-owner:${owner:-missing}"
[ -z "$bad" ] || { echo "$bad"; exit 1; }
'
check() { pm run --rm --network host --no-healthcheck --user 0 --entrypoint sh "$@"; }
found="$(check "$image" -c "$inspect_script")" || fail "the image holds what it should not: $found"
# Nothing mounted into the build is left in the image: each mount target is as in the base
# image (absent, or the base's own CA bundle).
targets=()
for ((i = 1; i < ${#mounts[@]}; i += 2)); do
    spec="${mounts[i]#*:}"
    targets+=("${spec%:ro}")
done
# shellcheck disable=SC2016  # expanded by the container's shell
listing='for p; do [ -e "$p" ] && { printf "%s " "$p"; [ -f "$p" ] && sha256sum <"$p"; echo; }; done; true'
in_image="$(check "$image" -c "$listing" sh "${targets[@]}")"
in_base="$(check "$base_image" -c "$listing" sh "${targets[@]}")"
[ "$in_image" = "$in_base" ] || fail "build mounts left in the image: $in_image (base: $in_base)"
say "no compiler, no pip cache, no source tree, no build mounts (${targets[*]}); /var/lib/aspose-proxy owned by $UID_EXPECTED"

# ---------------------------------------------------------------- run: sandbox + proxy
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
sandbox_port="$(free_port)"
proxy_port="$(free_port)"
[ "$sandbox_port" != "$proxy_port" ] || proxy_port="$(free_port)"

sandbox="${tag}-sandbox"
proxy="${tag}-proxy"
containers+=("$sandbox" "$proxy")
# podman wants systemd for HEALTHCHECK timers and says so on every run and stop; nothing else
# it prints is dropped.
no_systemd() { grep -v 'unable to get systemd connection' >&2 || true; }
pm run -d --name "$sandbox" --network host "$image" \
    sandbox --host 127.0.0.1 --port "$sandbox_port" >/dev/null 2> >(no_systemd)
# As Kubernetes runs it: a read-only root file system (podman puts a tmpfs on /tmp), the state
# directory a named volume (which takes the image directory's owner, as Compose's does).
pm run -d --name "$proxy" --network host 2> >(no_systemd) \
    --read-only -v "$tag-state:/var/lib/aspose-proxy" \
    -e ASPOSE_PROXY_PORT="$proxy_port" \
    -e ASPOSE_PROXY_UPSTREAM_URL="http://127.0.0.1:$sandbox_port" \
    -e ASPOSE_PROXY_CLIENT_ID=demo \
    -e ASPOSE_PROXY_CLIENT_SECRET=demo-secret \
    "$image" >/dev/null

base="http://127.0.0.1:$proxy_port"
ready=""
for _ in $(seq 1 120); do
    ready="$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz" || true)"
    [ "$ready" = 200 ] && break
    [ "$(pm inspect --format '{{.State.Running}}' "$proxy")" = true ] || fail "the proxy exited"
    sleep 0.5
done
[ "$ready" = 200 ] || fail "/readyz answered '$ready', not 200, within 60 s"
say "/readyz answers 200 on port $proxy_port (sandbox on $sandbox_port)"

pid="$(pm inspect --format '{{.State.Pid}}' "$proxy")"
uid="$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")"
[ "$uid" = "$UID_EXPECTED" ] || fail "the proxy runs as uid $uid, not $UID_EXPECTED"
say "the proxy process (host pid $pid) runs as uid $uid"

head -c 3000000 /dev/urandom >"$work/upload.bin"
path="v4.0/words/storage/file/container-check/upload.bin"
code="$(curl -s -o "$work/put.json" -w '%{http_code}' -T "$work/upload.bin" "$base/$path")"
[ "$code" = 200 ] || fail "upload answered $code: $(cat "$work/put.json")"
code="$(curl -s -o "$work/download.bin" -w '%{http_code}' "$base/$path")"
[ "$code" = 200 ] || fail "download answered $code"
sent="$(sha256sum <"$work/upload.bin" | cut -d' ' -f1)"
got="$(sha256sum <"$work/download.bin" | cut -d' ' -f1)"
[ "$sent" = "$got" ] || fail "downloaded file differs: sha256 $got, uploaded $sent"
say "3 MB uploaded and downloaded through the proxy, sha256 $sent"

pm healthcheck run "$proxy" >/dev/null || fail "the image's HEALTHCHECK fails"
say "HEALTHCHECK passes"

pm kill --signal TERM "$proxy" >/dev/null 2> >(no_systemd)
exit_code="$(timeout 60 "${PM[@]}" wait "$proxy")" || fail "the proxy did not stop within 60 s of SIGTERM"
[ "$exit_code" = 0 ] || fail "the proxy exited $exit_code after SIGTERM, not 0"
pm stop -t 30 "$sandbox" >/dev/null 2> >(no_systemd)
sandbox_exit="$(pm inspect --format '{{.State.ExitCode}}' "$sandbox")"
[ "$sandbox_exit" = 0 ] || fail "the sandbox exited $sandbox_exit after podman stop, not 0"
say "SIGTERM stops the proxy (exit 0) and podman stop the sandbox (exit 0)"

# The usage store's SQLite file lands in the state volume, written by uid 10001.
state="$(pm volume inspect --format '{{.Mountpoint}}' "$tag-state")"
[ -s "$state/usage.db" ] || fail "no usage store in /var/lib/aspose-proxy: $(ls -A "$state")"
owner="$(stat -c %u "$state/usage.db")"
[ "$owner" = "$UID_EXPECTED" ] || fail "usage.db belongs to uid $owner, not $UID_EXPECTED"
say "read-only root: the usage store is /var/lib/aspose-proxy/usage.db in a volume ($(stat -c %s "$state/usage.db") bytes, uid $owner)"

size="$(pm image inspect --format '{{.Size}}' "$image")"
say "image size: $((size / 1000000)) MB ($size bytes), base $(($(pm image inspect --format '{{.Size}}' "$base_image") / 1000000)) MB"
say "PASS"
