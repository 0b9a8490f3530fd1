#!/usr/bin/env bash
# Build the emulated aarch64 environment the arm64 checks run in: no Docker, no root, no binfmt registration.
#
#   qemu-aarch64 and qemu-x86_64 of QEMU 10 (Debian trixie's qemu-user for this host, statically linked,
#   extracted, not installed; kept as qemu-aarch64-static / qemu-x86_64-static). qemu-x86_64 runs the venv's
#   python as an AVX2-only Haswell (tests/test_targets.py). Bookworm's QEMU 7.2 mis-emulated AVX2 (numpy's
#   argpartition gave wrong top-k under -cpu Haswell), so benchmarks/arm64/selfcheck.py compares a numpy top-k
#   and a small int8 model emulated vs native before the environment is called ready (when the host python has
#   numpy, onnx and onnxruntime; tests/test_arm64.py runs the same check otherwise)
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
qemu_suite=trixie  # QEMU 10
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
key=$(printf '%s\n' "$suite" "$qemu_suite" "$cpu" "${debs[@]}" "${pins[@]}" | cat - "$0" "$here/env.py" "$here/selfcheck.py" |
    sha256sum | cut -d' ' -f1)
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
# private_apt DIR SUITE ARCH: a private apt configuration for SUITE's ARCH packages under DIR.
private_apt() {
    local dir=$1 release=$2 arch=$3
    mkdir -p "$dir"/{lists/partial,archives/partial,etc/sources.list.d,etc/apt.conf.d,etc/preferences.d}
    rm -f "$dir"/*.bin
    : >"$dir/status"
    cat >"$dir/etc/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${mirror%/}
Suites: $release $release-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $release-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$dir/apt.conf" <<EOF
Dir::State "$dir";
Dir::State::Lists "$dir/lists";
Dir::State::status "$dir/status";
Dir::Cache "$dir";
Dir::Cache::archives "$dir/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Etc "$dir/etc";
Dir::Etc::Parts "$dir/etc/apt.conf.d";
Dir::Etc::PreferencesParts "$dir/etc/preferences.d";
APT::Architecture "$arch";
APT::Architectures { "$arch"; "$host_arch"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
Debug::NoLocking "true";
EOF
}
apt_dir=$cache/apt
qemu_apt=$cache/apt-$qemu_suite
private_apt "$apt_dir" "$suite" arm64
private_apt "$qemu_apt" "$qemu_suite" "$host_arch"
export APT_CONFIG=$apt_dir/apt.conf
log "apt lists for $suite arm64 from $mirror"
apt-get -q -o APT::Update::Error-Mode=any update >"$cache/apt-update.log" 2>&1 ||
    { cat "$cache/apt-update.log"; log "error: apt-get update failed (see above)"; exit 1; }
log "downloading ${debs[*]} (arm64)"
apt-get -q -y --download-only --no-install-recommends install "${debs[@]}" >"$cache/apt-download.log" 2>&1 ||
    { cat "$cache/apt-download.log"; exit 1; }
log "apt lists for $qemu_suite $host_arch; downloading qemu-user (QEMU 10, statically linked)"
APT_CONFIG=$qemu_apt/apt.conf apt-get -q -o APT::Update::Error-Mode=any update >>"$cache/apt-update.log" 2>&1 ||
    { cat "$cache/apt-update.log"; log "error: apt-get update ($qemu_suite) failed (see above)"; exit 1; }
(cd "$qemu_apt/archives" && APT_CONFIG=$qemu_apt/apt.conf apt-get -q download "qemu-user:$host_arch" \
    >>"$cache/apt-download.log" 2>&1) || { cat "$cache/apt-download.log"; exit 1; }

log "unpacking the arm64 user space and qemu"
rm -rf "$cache/root.new" "$cache/qemu.new"
mkdir -p "$cache/root.new" "$cache/qemu.new"
for deb in "$apt_dir"/archives/*_arm64.deb "$apt_dir"/archives/*_all.deb; do
    dpkg-deb -x "$deb" "$cache/root.new"
done
dpkg-deb -x "$qemu_apt"/archives/qemu-user_*_"$host_arch".deb "$cache/qemu.new/deb"
mv "$cache/qemu.new/deb/usr/bin/qemu-aarch64" "$cache/qemu.new/qemu-aarch64-static"
mv "$cache/qemu.new/deb/usr/bin/qemu-x86_64" "$cache/qemu.new/qemu-x86_64-static"
rm -rf "$cache/qemu.new/deb" "$apt_dir/lists" "$qemu_apt/lists"  # the other targets' emulators, package lists
for emulator in "$cache"/qemu.new/qemu-*-static; do
    "$emulator" --version | head -n1 | grep -q -E 'version (1[0-9]|[2-9][0-9])\.' ||
        { log "error: $emulator is not QEMU 10 or later: $("$emulator" --version | head -n1)"; exit 1; }
done
# qemu -L looks a path up in the root first and falls back to the host: empty site dirs shadow the host's x86
# packages. QEMU 10 writes the guest's /proc/cpuinfo itself, from the emulated core (MIDR and features).
mkdir -p "$cache/root.new/usr/lib/python3/dist-packages" "$cache/root.new/usr/local/lib/python3.11/dist-packages" \
    "$cache/root.new/usr/lib/python3.11/dist-packages"

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
"$host_python" "$here/env.py" --check
if "$host_python" -c "import numpy, onnx, onnxruntime.quantization" 2>/dev/null; then
    "$host_python" "$here/selfcheck.py" || { log "error: emulated results disagree with native ones (see above)"; exit 1; }
else
    log "self-check deferred: $host_python lacks numpy/onnx/onnxruntime (tests/test_arm64.py runs it)"
fi
echo "$key" >"$cache/ready"
finish "built"
