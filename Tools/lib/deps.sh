# Installs the Debian packages Tessera needs, quietly when they are already there.
# Sourced by Tools/test and Tools/quickstart.

TESSERA_DEBIAN_PACKAGES=(
    libzstd-dev libxxhash-dev pkg-config   # the C libraries the build links
    qemu-utils libnbd-bin python3-libnbd nbdkit   # real NBD peers for interop tests (qemu-io, qemu-img, qemu-nbd, nbdinfo, nbdcopy, nbdsh)
    xxhash zstd e2fsprogs                  # tools the tests and the demo use (xxhsum, zstd, mkfs.ext4)
    systemd                                # systemd-analyze verify checks the units in Tools/systemd
)

tessera_missing_packages() {
    local missing=()
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    echo "${missing[@]:-}"
}

tessera_install_packages() {
    local missing
    missing=$(tessera_missing_packages "$@")
    [ -z "$missing" ] && return 0
    echo "Installing Debian packages: $missing"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null; then sudo="sudo"; else
            echo "error: these Debian packages are missing and I cannot install them without root: $missing" >&2
            echo "       run as root, or: apt-get install -y $missing" >&2
            return 1
        fi
    fi
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/tmp/tessera-apt.log 2>&1; then
        # The package lists may be missing or stale on a fresh machine.
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >>/tmp/tessera-apt.log 2>&1 || true
        if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >>/tmp/tessera-apt.log 2>&1; then
            echo "error: could not install: $missing (see /tmp/tessera-apt.log)" >&2
            echo "       install them by hand: apt-get install -y $missing" >&2
            return 1
        fi
    fi
}

tessera_require_swift() {
    if ! command -v swift >/dev/null; then
        echo "error: swift is not on PATH; install Swift 6.3 (https://swift.org/install) and retry" >&2
        return 1
    fi
}

# Builds a release product (default `tessera`) and prints its path. The Swift runtime and Foundation are
# linked statically: one self-contained binary to copy onto a hypervisor, which also starts
# faster and keeps ~6 MiB less resident than with the shared libraries (measured:
# `tessera --help` 21 → 16 MiB peak RSS). Every release build uses the same flags, so
# SwiftPM never rebuilds the whole tree for a flag change.
TESSERA_RELEASE_FLAGS=(-c release --static-swift-stdlib)
tessera_build_release() {
    local product=${1:-tessera}
    swift build "${TESSERA_RELEASE_FLAGS[@]}" --product "$product" 2>&1 \
        | grep -E "error|warning: |Build complete" | grep -v "^\[" | grep -v "mktemp' is dangerous" >&2 || true
    local bin
    bin="$(swift build "${TESSERA_RELEASE_FLAGS[@]}" --show-bin-path)/$product"
    [ -x "$bin" ] || { echo "error: the build did not produce $bin" >&2; return 1; }
    echo "$bin"
}
