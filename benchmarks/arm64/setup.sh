#!/usr/bin/env bash
# Build the emulated aarch64 environment the arm64 checks run in: no Docker, no root, no binfmt registration.
#
#   qemu-aarch64-static (Debian's qemu-user-static for this host, extracted, not installed); its
#   qemu-x86_64-static is kept too: it runs the venv's python as an AVX2-only Haswell (tests/test_targets.py)
#   + a Debian bookworm arm64 user space with python3.11 (Debian's .debs, unpacked with dpkg-deb -x)
#   + the aarch64 manylinux wheels of onnxruntime, numpy, pillow (versions from constraints.txt), from PyPI.
#
# The aarch64 interpreter then runs as `qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11`; use
# benchmarks/arm64/python, which sets that up. Idempotent: a second run with the same inputs only checks.
# Cache: $SMALLNETS_ARM64_ROOT (default ~/.cache/smallnets/arm64). Emulated core: $SMALLNETS_QEMU_CPU
# (default neoverse-n1, the Graviton2 / Ampere Altra core; cortex-a72 is a Raspberry Pi 4, cortex-a76 a Pi 5).
set -euo pipefail

started=$(date +%s)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${SMALLNETS_ARM64_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/smallnets/arm64}
cpu=${SMALLNETS_QEMU_CPU:-neoverse-n1}
suite=bookworm
debs=(python3.11 libstdc++6)
# Runtime imports only: onnxruntime and its install requirements, numpy, pillow (serve/, optimize validation,
# benchmarks/measure; tqdm for progress bars). No torch, no onnxsim, no onnx.
wheels=(onnxruntime numpy pillow flatbuffers packaging protobuf tqdm)

log() { printf 'arm64 setup: %s\n' "$*"; }
finish() { log "$1 in $(($(date +%s) - started)) s ($cache)"; }

host_python=${PYTHON:-}
if [[ -z "$host_python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then host_python=$repo/.venv/bin/python; else host_python=$(command -v python3); fi
fi
# env.py imports the project's own modules (stdlib-only ones): CI runs this before `make test` creates the venv.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

pins=()
for name in "${wheels[@]}"; do
    pin=$(grep -i -E "^${name}==" "$repo/constraints.txt" || true)
    [[ -n "$pin" ]] || { log "error: $name is not pinned in constraints.txt; pin it there"; exit 2; }
    pins+=("$pin")
done
key=$(printf '%s\n' "$suite" "$cpu" "${debs[@]}" "${pins[@]}" | cat - "$0" "$here/env.py" | sha256sum | cut -d' ' -f1)
if [[ -f "$cache/ready" && "$(cat "$cache/ready")" == "$key" ]]; then
    if "$host_python" "$here/env.py" --check >/dev/null; then
        finish "cached, ready"
        exit 0
    fi
    log "the cached environment failed its check; rebuilding it"
fi
rm -f "$cache/ready" "$cache/env.json"
mkdir -p "$cache"

# A private apt configuration (own lists, cache and empty dpkg status) over the host's Debian mirror: it resolves
# arm64 dependencies without `dpkg --add-architecture` and without touching the host's apt state.
host_arch=$(dpkg --print-architecture)
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -E '^(URIs:|deb )' | grep -o -E 'https?://[^ ]+/debian/?( |$)' | grep -v -- '-security' | head -n1 |
    tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
security=${mirror%/debian*}/debian-security
apt_dir=$cache/apt
mkdir -p "$apt_dir"/{lists/partial,archives/partial,etc/sources.list.d,etc/apt.conf.d,etc/preferences.d}
rm -f "$apt_dir"/*.bin
: >"$apt_dir/status"
cat >"$apt_dir/etc/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${mirror%/}
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cat >"$apt_dir/apt.conf" <<EOF
Dir::State "$apt_dir";
Dir::State::Lists "$apt_dir/lists";
Dir::State::status "$apt_dir/status";
Dir::Cache "$apt_dir";
Dir::Cache::archives "$apt_dir/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Etc "$apt_dir/etc";
Dir::Etc::Parts "$apt_dir/etc/apt.conf.d";
Dir::Etc::PreferencesParts "$apt_dir/etc/preferences.d";
APT::Architecture "arm64";
APT::Architectures { "arm64"; "$host_arch"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
Debug::NoLocking "true";
EOF
export APT_CONFIG=$apt_dir/apt.conf
log "apt lists for $suite arm64 from $mirror"
apt-get -q -o APT::Update::Error-Mode=any update >"$cache/apt-update.log" 2>&1 ||
    { cat "$cache/apt-update.log"; log "error: apt-get update failed (see above)"; exit 1; }
log "downloading ${debs[*]} (arm64) and qemu-user-static ($host_arch)"
apt-get -q -y --download-only --no-install-recommends install "${debs[@]}" >"$cache/apt-download.log" 2>&1 ||
    { cat "$cache/apt-download.log"; exit 1; }
(cd "$apt_dir/archives" && apt-get -q download "qemu-user-static:$host_arch" >>"$cache/apt-download.log" 2>&1) ||
    { cat "$cache/apt-download.log"; exit 1; }

log "unpacking the arm64 user space and qemu"
rm -rf "$cache/root.new" "$cache/qemu.new"
mkdir -p "$cache/root.new" "$cache/qemu.new"
for deb in "$apt_dir"/archives/*_arm64.deb "$apt_dir"/archives/*_all.deb; do
    dpkg-deb -x "$deb" "$cache/root.new"
done
dpkg-deb -x "$apt_dir"/archives/qemu-user-static_*_"$host_arch".deb "$cache/qemu.new/deb"
mv "$cache/qemu.new/deb/usr/bin/qemu-aarch64-static" "$cache/qemu.new/deb/usr/bin/qemu-x86_64-static" "$cache/qemu.new/"
rm -rf "$cache/qemu.new/deb" "$apt_dir/lists"  # the other targets' emulators and the package lists: 500 MB
# qemu -L looks a path up in the root first and falls back to the host: empty site dirs shadow the host's x86
# packages; /proc/cpuinfo is written by env.py (qemu 7.2 passes the host's x86 one through, which crashes
# onnxruntime's cpuinfo library at import).
mkdir -p "$cache/root.new/usr/lib/python3/dist-packages" "$cache/root.new/usr/local/lib/python3.11/dist-packages" \
    "$cache/root.new/usr/lib/python3.11/dist-packages" "$cache/root.new/proc"

log "aarch64 wheels: ${pins[*]}"
wheel_dir=$cache/wheels
mkdir -p "$wheel_dir"
platforms=(--platform manylinux2014_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64)
abi=(--python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none --only-binary=:all:)
"$host_python" -m pip download -q --disable-pip-version-check --no-deps "${platforms[@]}" "${abi[@]}" \
    -d "$wheel_dir" "${pins[@]}"
site=$cache/root.new/opt/smallnets/site
"$host_python" -m pip install -q --disable-pip-version-check --no-deps --no-index --find-links "$wheel_dir" \
    "${platforms[@]}" "${abi[@]}" --target "$site" "${pins[@]}"

rm -rf "$cache/root" "$cache/qemu"
mv "$cache/root.new" "$cache/root"
mv "$cache/qemu.new" "$cache/qemu"
cat >"$cache/env.json" <<EOF
{"qemu": "$cache/qemu/qemu-aarch64-static", "root": "$cache/root", "site": "$cache/root/opt/smallnets/site", "cpu": "$cpu"}
EOF
"$host_python" "$here/env.py" --write-cpuinfo
"$host_python" "$here/env.py" --check
echo "$key" >"$cache/ready"
finish "built"
