#!/usr/bin/env bash
# The Climatik container image, built from ./Containerfile.
#
#   scripts/image.sh            (`make image`) compile the release binaries,
#                               assemble a base image from this machine's
#                               libraries, build the image with buildah
#                               (no daemon, no registry, nothing pulled), check
#                               that it runs, and write it as an OCI archive:
#                                 target/image/climatik-<appVersion>.oci.tar
#                               tagged ghcr.io/climatik-project/climatik:<appVersion>
#                               (its path in target/image/archive, its name in
#                               target/image/ref, its size in
#                               target/image/climatik-<appVersion>.size)
#   scripts/image.sh binaries [DIR]
#                               only compile and collect the binaries, into DIR
#                               (default target/image/bin/<arch>/, where
#                               `docker build --target prebuilt` takes them
#                               from). The Containerfile's builder stage runs
#                               this too.
#
# Environment:
#   IMAGE_REPOSITORY  image name (default ghcr.io/climatik-project/climatik)
#   IMAGE_TAG         image tag (default: appVersion of charts/climatik)
#   IMAGE_STORE       buildah storage used for the build (default
#                     $CLIMATIK_CACHE_DIR/image/containers; a private store,
#                     so it never mixes with your own buildah/podman images)
#   IMAGE_STORAGE_DRIVER  storage driver of that store (default vfs)
#   IMAGE_SMOKE=0     skip the check that every binary starts in the image
#   SOURCE_DATE_EPOCH image creation time and layer mtimes (default: the last
#                     commit's time), so unchanged inputs give the same image
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "image: $*" >&2; }
die() { log "$*"; exit 1; }

# The Docker/OCI name of the architecture cargo builds for.
target_arch() {
  local triple="${CARGO_BUILD_TARGET:-}"
  [ -n "$triple" ] || triple=$(rustc -vV | sed -n 's/^host: //p')
  case "$triple" in
    x86_64-*) echo amd64 ;;
    aarch64-*) echo arm64 ;;
    armv7-* | arm-*) echo arm ;;
    powerpc64le-*) echo ppc64le ;;
    riscv64*) echo riscv64 ;;
    s390x-*) echo s390x ;;
    *) die "unknown architecture of target $triple" ;;
  esac
}

# The binaries the chart runs: `command: ["x"]` in its templates, and the
# controllers' `"binary" "x"`.
chart_commands() {
  grep -rhoE --include='*.yaml' 'command: \["[^"{]+"|"binary" "[^"]+"' charts/climatik/templates |
    sed -E 's/.*"([^"]+)"$/\1/' | sort -u
}

# Every binary of the workspace except the benchmarks (*-bench) and the demo
# driver (the build leaves out the bench, demo and test support packages; the
# name filter below still drops any *-bench that appears elsewhere), into
# OUT. The binaries the chart runs must be among them.
collect_binaries() {
  local out="$1" messages exes=() exe name
  messages=$(mktemp)
  log "compiling the release binaries (cargo build --release)"
  cargo build --release --locked --workspace --bins \
    --exclude climatik-bench --exclude climatik-demo --exclude climatik-test-support \
    --message-format=json-render-diagnostics >"$messages" || { rm -f "$messages"; exit 1; }
  # Cargo reports every executable it built or found up to date.
  while IFS= read -r exe; do
    name=${exe##*/}
    case "$name" in *-bench) continue ;; esac
    exes+=("$exe")
  done < <(grep -o '"executable":"[^"]*"' "$messages" | sed 's/^"executable":"//; s/"$//' | sort -u)
  rm -f "$messages"
  [ ${#exes[@]} -gt 0 ] || die "cargo built no binaries"

  mkdir -p "$out"
  # Drop binaries that are no longer part of the workspace.
  local keep=" ${exes[*]##*/} " f
  for f in "$out"/*; do
    [ -e "$f" ] || continue
    case "$keep" in *" ${f##*/} "*) ;; *) rm -f "$f" ;; esac
  done
  for exe in "${exes[@]}"; do
    cmp -s "$exe" "$out/${exe##*/}" || install -m 0755 "$exe" "$out/${exe##*/}"
  done

  local cmd missing=()
  for cmd in $(chart_commands); do
    [ -x "$out/$cmd" ] || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] || die "the chart runs ${missing[*]}, which the build did not produce"
  log "binaries in $out: $(cd "$out" && echo *)"
}

if [ "${1:-}" = binaries ]; then
  collect_binaries "${2:-target/image/bin/$(target_arch)}"
  exit 0
fi
[ $# -eq 0 ] || die "usage: scripts/image.sh [binaries [DIR]]"

command -v buildah >/dev/null || die "buildah not found (Debian/Ubuntu: apt-get install buildah); or use docker/podman build, see README.md"
command -v ldd >/dev/null || die "ldd not found"

version=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' charts/climatik/Chart.yaml)
[ -n "$version" ] || die "no appVersion in charts/climatik/Chart.yaml"
containerfile_version=$(sed -n 's/^ARG VERSION=//p' Containerfile)
[ "$containerfile_version" = "$version" ] ||
  die "Containerfile's ARG VERSION=$containerfile_version differs from the chart's appVersion $version; update the Containerfile"
repository="${IMAGE_REPOSITORY:-ghcr.io/climatik-project/climatik}"
tag="${IMAGE_TAG:-$version}"
ref="$repository:$tag"
arch=$(target_arch)
[ "$arch" = "$(CARGO_BUILD_TARGET='' target_arch)" ] ||
  die "make image builds for this machine's architecture only (the base is made from its libraries); for $arch use docker/podman buildx with --platform, see README.md"

cache_dir="${CLIMATIK_CACHE_DIR:-$HOME/.cache/climatik}"
store="${IMAGE_STORE:-$cache_dir/image/containers}"
buildah=(buildah --root "$store/storage" --runroot "$store/run" --storage-driver "${IMAGE_STORAGE_DRIVER:-vfs}")
export BUILDAH_ISOLATION=chroot

out_dir=target/image
bin_dir="$out_dir/bin/$arch"
archive="$out_dir/climatik-$tag.oci.tar"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
revision=$(git rev-parse HEAD 2>/dev/null || true)

started=$(date +%s)
collect_binaries "$bin_dir"

# --- base image: the shared libraries the binaries load, a nonroot user -----
# The binaries need only what `ldd` lists (glibc, libgcc_s, the loader); NVML
# is dlopen'ed from the driver the NVIDIA container toolkit mounts into
# /usr/lib/<multiarch>, which the loader searches by default.
libs=()
while IFS= read -r lib; do libs+=("$lib"); done < <(
  for f in "$bin_dir"/*; do
    ldd "$f" 2>/dev/null || true
  done | awk '
    /not found/ { print "MISSING " $1; next }
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }' | sort -u)
for lib in "${libs[@]}"; do
  case "$lib" in MISSING*) die "a binary needs ${lib#MISSING }, which this machine lacks" ;; esac
done
# libnvidia-ml.so.1 itself links against glibc's libdl, libpthread, librt and
# libm (stubs since glibc 2.34, but its NEEDED entries must resolve), which a
# distroless cc image has and the binaries alone would not bring in.
libc_dir=""
for lib in "${libs[@]}"; do
  case "$lib" in */libc.so.6) libc_dir=$(dirname "$lib") ;; esac
done
# The program interpreter: the one path ldd lists without a name.
interp=$(for f in "$bin_dir"/*; do ldd "$f" 2>/dev/null || true; done | awk '$1 ~ /^\// { print $1; exit }')
[ -n "$interp" ] || die "ldd found no program interpreter (static binaries?); the base expects glibc"
[ -n "$libc_dir" ] || die "the binaries do not link glibc's libc.so.6 (ldd), which the base expects"
for lib in libdl.so.2 libpthread.so.0 librt.so.1 libm.so.6; do
  if [ -e "$libc_dir/$lib" ]; then libs+=("$libc_dir/$lib"); fi
done
mapfile -t libs < <(printf '%s\n' "${libs[@]}" | sort -u)
ca_bundle=/etc/ssl/certs/ca-certificates.crt
base_hash=$(
  {
    echo "$arch"
    sha256sum scripts/image.sh
    for lib in "${libs[@]}"; do echo "$lib $(sha256sum <"$(readlink -f "$lib")")"; done
    [ -f "$ca_bundle" ] && sha256sum "$ca_bundle"
  } | sha256sum | cut -c1-16
)
base="localhost/climatik-base:$arch-$base_hash"

# Copies PATH (a file or a chain of symlinks) into the root ROOT at the same
# physical place as on this machine.
copy_path() {
  local root="$1" path="$2" dir target
  while :; do
    dir=$(cd "$(dirname "$path")" && pwd -P)
    mkdir -p "$root$dir"
    cp -P --preserve=mode,links "$dir/${path##*/}" "$root$dir/"
    [ -L "$dir/${path##*/}" ] || break
    target=$(readlink "$dir/${path##*/}")
    case "$target" in /*) path="$target" ;; *) path="$dir/$target" ;; esac
  done
}

if "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  log "base $base is up to date"
else
  log "assembling the base $base from ${#libs[@]} libraries"
  work=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  root="$work/root"
  mkdir -p "$root"/{etc,home,tmp,root,usr/local/bin,usr/bin,usr/sbin} "$work/home/nonroot"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root" "$work/home/nonroot"
  # The merged-/usr links (/lib -> usr/lib ...) as on this machine.
  for d in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$root/$d"; fi
  done
  for lib in "${libs[@]}"; do copy_path "$root" "$lib"; done
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
services: files
EOF
  if [ -f "$ca_bundle" ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  c=$("${buildah[@]}" from --pull=never scratch)
  "${buildah[@]}" copy --quiet "$c" "$root/" / >/dev/null
  # The nonroot user's home (0700, 65532) as an archive, the one way to give
  # a directory an owner and mode of its own (COPY copies a directory's
  # contents, and --chown would apply to /home too).
  tar -C "$work" --numeric-owner --owner=65532 --group=65532 -cf "$work/nonroot.tar" home/nonroot
  "${buildah[@]}" add --quiet "$c" "$work/nonroot.tar" / >/dev/null
  "${buildah[@]}" config --os linux --arch "$arch" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --user 65532:65532 --workingdir /home/nonroot "$c"
  "${buildah[@]}" commit --quiet --identity-label=false --timestamp 0 --rm "$c" "$base" >/dev/null
  rm -rf "$work"
  trap - EXIT
  # Bases made from earlier libraries or scripts.
  "${buildah[@]}" images --format '{{.Name}}:{{.Tag}}' | grep "^localhost/climatik-base:$arch-" |
    grep -vx "$base" | xargs -r "${buildah[@]}" rmi >/dev/null || true
fi

# --- the image -----------------------------------------------------------------
inputs=$(
  {
    echo "$ref $base $revision $SOURCE_DATE_EPOCH ${IMAGE_SMOKE:-1}"
    sha256sum Containerfile .dockerignore scripts/image.sh "$bin_dir"/*
  } | sha256sum | cut -d' ' -f1
)
stamp="$out_dir/.climatik-$tag.inputs"
if [ -f "$archive" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  log "$archive is up to date"
else
  rm -f "$stamp"
  log "building $ref"
  "${buildah[@]}" build --quiet --pull=never --layers=false --identity-label=false \
    --platform "linux/$arch" --build-arg TARGETARCH="$arch" \
    --timestamp "$SOURCE_DATE_EPOCH" \
    --target prebuilt --build-arg BASE_IMAGE="$base" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    -f Containerfile -t "$ref" . >/dev/null

  if [ "${IMAGE_SMOKE:-1}" != 0 ]; then
    # Every binary's libraries resolve in the image (the loader's --list, which
    # runs nothing); the chart's commands and crdgen run; the image's user is
    # 65532: it can write its home (0700, 65532) but not /root (0700, root).
    log "checking that the binaries run in the image"
    c=$("${buildah[@]}" from --pull=never "$ref")
    trap '"${buildah[@]}" rm "$c" >/dev/null 2>&1 || true' EXIT
    run() { "${buildah[@]}" run "$c" -- "$@"; }
    for b in "$bin_dir"/*; do
      b=${b##*/}
      if ! listed=$(run "$interp" --list "/usr/local/bin/$b" 2>&1) || grep -q 'not found' <<<"$listed"; then
        die "$b cannot load its libraries in the image:"$'\n'"$listed"
      fi
    done
    for b in $(chart_commands) climatik-certs; do
      run "$b" --help >/dev/null || die "$b --help failed in the image"
    done
    if ! crds=$(run crdgen) || ! grep -q '^kind: CustomResourceDefinition' <<<"$crds"; then
      die "crdgen failed in the image"
    fi
    run climatik-certs dev-ca --out-dir /home/nonroot/certs --dns-name smoke.invalid 2>/dev/null ||
      die "climatik-certs cannot write the nonroot user's home: the image does not run as 65532"
    if run climatik-certs dev-ca --out-dir /root/certs --dns-name smoke.invalid 2>/dev/null; then
      die "the image runs as root"
    fi
    "${buildah[@]}" rm "$c" >/dev/null
    trap - EXIT
  fi

  rm -f "$archive"
  "${buildah[@]}" push --quiet "$ref" "oci-archive:$archive:$ref"
  # Intermediate stages, and images this build replaced.
  "${buildah[@]}" containers --format '{{.ContainerID}} {{.ImageName}}' |
    awk 'NF == 1 { print $1 }' | xargs -r "${buildah[@]}" rm >/dev/null 2>&1 || true
  "${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
  echo "$inputs" >"$stamp"
fi

# --- size ------------------------------------------------------------------------
archive_bytes=$(stat -c %s "$archive")
uncompressed_bytes=0
while IFS= read -r blob; do
  n=$(tar -xOf "$archive" "$blob" | { gzip -dc 2>/dev/null || true; } | wc -c)
  uncompressed_bytes=$((uncompressed_bytes + n))
done < <(tar -tf "$archive" | grep '^blobs/sha256/.')
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
cat >"$out_dir/climatik-$tag.size" <<EOF
image $ref
archive $archive
platform linux/$arch
archive_bytes $archive_bytes
uncompressed_bytes $uncompressed_bytes
EOF
# Where tests and scripts find the image: the archive's path and its name.
echo "$archive" >"$out_dir/archive"
echo "$ref" >"$out_dir/ref"
log "$ref -> $archive"
log "size: $(mib "$archive_bytes") archive (gzip layers), $(mib "$uncompressed_bytes") uncompressed"
log "done in $(($(date +%s) - started)) s"
log "import into containerd: ctr -n k8s.io images import $archive"
