#!/usr/bin/env bash
# Builds the docker backend's test images locally, pulling nothing from a registry:
# each image is a root filesystem assembled from this host's own files and loaded
# with "docker import".
#
#   mcp-sandbox-proxy-test/python:latest  Debian's python3.11 with a virtual
#       environment at /usr/local holding mcp-server-time and the mcp SDK (the
#       versions installed in the test cache's mcp-server-time environment), so
#       "python3" and "mcp-server-time" resolve on the default PATH.
#   mcp-sandbox-proxy-test/node:latest    node with the test cache's npm servers
#       (server-everything, server-filesystem) linked into /usr/local/bin.
#
# An image carries a label with the hash of everything it was built from; the build
# is skipped when an image with the same hash exists. Needs a running engine
# (scripts/docker-up.sh) and the servers installed by scripts/setup.sh.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MCP_SANDBOX_PROXY_TEST_CACHE:-$HOME/.cache/mcp-sandbox-proxy-tests}
work="$cache/images"
hash_label=io.mcp-sandbox-proxy.test-image.content-hash
python_image=mcp-sandbox-proxy-test/python:latest
node_image=mcp-sandbox-proxy-test/node:latest
host_python=/usr/bin/python3.11
time_venv="$cache/venvs/mcp-server-time"
npm_dir="$cache/npm"

say() { printf '[build-test-images] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# Copies a host file into the root filesystem at its canonical path, and keeps the
# name it was reached by (a library's soname link, a merged-usr alias) as a link.
copy_file() {
  local rootfs=$1 path=$2 real named
  real=$(readlink -f "$path")
  named="$(readlink -f "$(dirname "$path")")/$(basename "$path")"
  mkdir -p "$rootfs$(dirname "$real")"
  cp -a "$real" "$rootfs$real"
  if [ "$named" != "$real" ] && [ ! -e "$rootfs$named" ]; then
    mkdir -p "$rootfs$(dirname "$named")"
    ln -s "$real" "$rootfs$named"
  fi
}

# Copies every shared library the given ELF files load, found through ldd.
copy_libraries() {
  local rootfs=$1; shift
  ldd "$@" 2>/dev/null \
    | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*[^:]$/ { print $1 }' | sort -u \
    | while read -r lib; do copy_file "$rootfs" "$lib"; done
}

# The skeleton every image shares: merged-usr links, users, a sticky /tmp.
make_skeleton() {
  local rootfs=$1
  rm -rf "$rootfs"
  mkdir -p "$rootfs"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,etc,opt,tmp}
  for dir in bin sbin lib lib64; do ln -s "usr/$dir" "$rootfs/$dir"; done
  chmod 1777 "$rootfs/tmp"
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n%s\n' \
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  copy_file "$rootfs" /usr/bin/env
}

build_python_rootfs() {
  local rootfs=$1 site
  make_skeleton "$rootfs"
  copy_file "$rootfs" "$host_python"
  ln -s python3.11 "$rootfs/usr/bin/python3"
  cp -a /usr/lib/python3.11 "$rootfs/usr/lib/"

  # The venv is created where it will live inside the image, then its scripts'
  # interpreter lines are pointed at the in-image path.
  "$host_python" -m venv "$rootfs/usr/local"
  "$rootfs/usr/local/bin/python" -m pip install -q --no-compile --no-deps \
    --only-binary=:all: --disable-pip-version-check -r "$work/python.requirements"
  "$rootfs/usr/local/bin/python" -m pip uninstall -q -y pip setuptools
  grep -rlF "$rootfs/usr/local" "$rootfs/usr/local/bin" "$rootfs/usr/local/pyvenv.cfg" \
    | xargs sed -i "s#$rootfs/usr/local#/usr/local#g"
  rm -f "$rootfs"/usr/local/bin/{activate,activate.csh,activate.fish,Activate.ps1}
  site="$rootfs/usr/local/lib/python3.11/site-packages"
  "$host_python" -m compileall -q -j 0 -d /usr/local/lib/python3.11/site-packages \
    "$site" >/dev/null

  mapfile -t elves < <(find "$rootfs/usr/lib/python3.11/lib-dynload" "$site" \
    -name '*.so' -type f)
  copy_libraries "$rootfs" "$host_python" "${elves[@]}"
}

build_node_rootfs() {
  local rootfs=$1 bin
  make_skeleton "$rootfs"
  copy_file "$rootfs" "$(command -v node)"
  [ -e "$rootfs/usr/bin/node" ] || ln -s "$(readlink -f "$(command -v node)")" \
    "$rootfs/usr/bin/node"
  mkdir -p "$rootfs/opt/mcp/npm"
  cp -a "$npm_dir/node_modules" "$npm_dir/package.json" "$rootfs/opt/mcp/npm/"
  for bin in mcp-server-everything mcp-server-filesystem; do
    ln -s "/opt/mcp/npm/node_modules/.bin/$bin" "$rootfs/usr/local/bin/$bin"
  done
  copy_libraries "$rootfs" "$(readlink -f "$(command -v node)")" /usr/bin/env
}

# Imports the root filesystem as the image, labelled with its content hash.
import_rootfs() {
  local rootfs=$1 image=$2 hash=$3
  ldconfig -r "$rootfs" 2>/dev/null || true
  tar -C "$rootfs" --numeric-owner -c . \
    | docker import --change "LABEL $hash_label=$hash" - "$image" >/dev/null
}

# Builds the image unless one with the same content hash exists.
build_if_changed() {
  local image=$1 hash=$2 builder=$3 current rootfs
  current=$(docker image inspect --format "{{index .Config.Labels \"$hash_label\"}}" \
    "$image" 2>/dev/null || true)
  if [ "$current" = "$hash" ]; then
    say "$image is up to date"
    return 0
  fi

  rootfs="$work/$(basename "${image%%:*}")-rootfs"
  say "building $image"
  local started=$SECONDS
  "$builder" "$rootfs"
  import_rootfs "$rootfs" "$image" "$hash"
  rm -rf "$rootfs"
  say "built $image in $((SECONDS - started))s"
}

[ -x "$time_venv/bin/python" ] || die "missing $time_venv: run scripts/setup.sh first"
[ -d "$npm_dir/node_modules" ] || die "missing $npm_dir/node_modules: run scripts/setup.sh first"
[ -x "$host_python" ] || die "missing $host_python: install Debian's python3.11"
"$host_python" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$host_python lacks venv/ensurepip: install Debian's python3-venv"
command -v node >/dev/null || die "node is not installed"

mkdir -p "$work"
exec 9>"$work/build.lock"
flock -w 300 9

"$time_venv/bin/python" -m pip freeze --disable-pip-version-check \
  | grep -v '^-e ' >"$work/python.requirements"
script_hash=$(sha256sum "$0" | cut -c1-64)
python_hash=$( { echo "$script_hash"; dpkg-query -W -f '${Version}' python3.11
  cat "$work/python.requirements"; } | sha256sum | cut -c1-32)
node_hash=$( { echo "$script_hash"; node --version; sha256sum <"$npm_dir/package-lock.json"
  } | sha256sum | cut -c1-32)

build_if_changed "$python_image" "$python_hash" build_python_rootfs
build_if_changed "$node_image" "$node_hash" build_node_rootfs
