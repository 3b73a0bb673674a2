#!/usr/bin/env bash
# Everything the aarch64 emulation tests need, cached and idempotent (a second run does nothing):
#   * Debian's qemu-user (qemu-aarch64) and g++-aarch64-linux-gnu (the cross compiler for export),
#   * an arm64 Python 3.11 sysroot, unpacked from Debian's arm64 .debs with `dpkg -x` (the system's own apt
#     state and architectures are not touched: apt gets its own lists folder),
#   * a site folder with the aarch64 wheels of apache-tvm-ffi, numpy and typing_extensions,
#   * the aarch64 libtvm_runtime.so from the apache-tvm wheel (what parallel kernels link against), put where
#     tvm_gru.export looks for it ($TVM_GRU_RUNTIME_LIBS, default ~/.cache/tvm_gru_runtime_libs),
#   * for tuning over TVM's RPC (tests/tuning/test_arm_qemu_tune.py): an aarch64 TVM, runtime only, that runs
#     `python -m tvm.exec.rpc_server` under emulation ($CACHE/tvm-rpc-<version>/site: the wheel's Python package
#     and runtime libraries without its 240 MB compiler library and CUTLASS headers, plus the aarch64 wheels of
#     ml_dtypes, psutil and cloudpickle), and $CACHE/bin/python3.11, a wrapper that starts the arm64 Python
#     under qemu-aarch64 and is also its sys.executable (the server re-runs sys.executable for its worker; without
#     binfmt_misc an aarch64 binary cannot be exec'ed directly).
# Prints the cache folder last. Usage: bash .ci/setup_qemu.sh
set -euo pipefail

CACHE="${TVM_GRU_QEMU_CACHE:-$HOME/.cache/tvm_gru_qemu}"
LIBS="${TVM_GRU_RUNTIME_LIBS:-$HOME/.cache/tvm_gru_runtime_libs}"
TVM_VERSION="0.27.0.post1"
FFI_VERSION="0.1.14.post1"
STAMP="$CACHE/.complete-v1"
PY=python3.11
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8 libstdc++6
      libgcc-s1 libssl3)
# Stdlib extension modules' libraries (bz2, lzma, uuid, sqlite, readline, ...): fetched when the release has them.
OPTIONAL_DEBS=(libbz2-1.0 liblzma5 libcrypt1 libuuid1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libnsl2
      libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1 libdb5.3)

log() { echo "setup_qemu: $*" >&2; }

# 1. host tools
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
if ((${#need[@]})); then
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

runtime_lib="$LIBS/$TVM_VERSION/aarch64/libtvm_runtime.so"
RPC="$CACHE/tvm-rpc-$TVM_VERSION"
RPC_STAMP="$RPC/.complete-v1"
if [[ -f "$STAMP" && -f "$runtime_lib" && -f "$RPC_STAMP" ]]; then
  echo "$CACHE"
  exit 0
fi
mkdir -p "$CACHE"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The apache-tvm aarch64 wheel (94 MB), downloaded at most once per run, for steps 4 and 6.
tvm_wheel() {
  if ! ls "$tmp"/apache_tvm-*.whl >/dev/null 2>&1; then
    log "apache-tvm $TVM_VERSION aarch64 wheel (94 MB)"
    python3 -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 \
      --no-deps -d "$tmp" "apache-tvm==$TVM_VERSION" >&2
  fi
  ls "$tmp"/apache_tvm-*.whl | head -1
}

# 2. arm64 Python sysroot
if [[ ! -x "$CACHE/sysroot/usr/bin/$PY" ]]; then
  log "arm64 sysroot"
  apt_dir="$CACHE/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/debs"
  opts=(-oAPT::Sandbox::User=root -oAPT::Architecture=arm64 -oAPT::Architectures=arm64 -oDir::State::Lists="$apt_dir/lists"
        -oDir::Cache="$apt_dir/cache" -oDir::State::Status=/dev/null -oDebug::NoLocking=1)
  mkdir -p "$apt_dir/cache/archives/partial"
  apt-get "${opts[@]}" update -qq
  (cd "$apt_dir/debs" && apt-get "${opts[@]}" download "${DEBS[@]/%/:arm64}" >/dev/null
   for deb in "${OPTIONAL_DEBS[@]}"; do apt-get "${opts[@]}" download "$deb:arm64" >/dev/null 2>&1 || true; done)
  rm -rf "$CACHE/sysroot.tmp" && mkdir -p "$CACHE/sysroot.tmp"
  for deb in "$apt_dir/debs"/*.deb; do dpkg -x "$deb" "$CACHE/sysroot.tmp"; done
  rm -rf "$CACHE/sysroot" && mv "$CACHE/sysroot.tmp" "$CACHE/sysroot"
  rm -rf "$apt_dir/lists" "$apt_dir/cache"
fi

# 3. aarch64 wheels
wheels="$CACHE/wheels"
mkdir -p "$wheels"
if [[ ! -d "$CACHE/site/tvm_ffi" ]]; then
  log "aarch64 wheels"
  python3 -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 \
    --no-deps -d "$wheels" "apache-tvm-ffi==$FFI_VERSION" "numpy>=1.26,<3" "typing_extensions>=4.5"
  rm -rf "$CACHE/site.tmp" && mkdir -p "$CACHE/site.tmp"
  for whl in "$wheels"/apache_tvm_ffi-*.whl "$wheels"/numpy-*.whl "$wheels"/typing_extensions-*.whl; do
    python3 -m zipfile -e "$whl" "$CACHE/site.tmp"
  done
  rm -rf "$CACHE/site" && mv "$CACHE/site.tmp" "$CACHE/site"
fi

# 4. aarch64 libtvm_runtime.so (from the 94 MB apache-tvm wheel; only the 3-4 MB library is kept)
if [[ ! -f "$runtime_lib" ]]; then
  log "aarch64 libtvm_runtime.so from apache-tvm $TVM_VERSION"
  whl="$(tvm_wheel)"
  mkdir -p "$(dirname "$runtime_lib")"
  python3 - "$whl" "$runtime_lib" <<'PYEOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("tvm/lib/libtvm_runtime.so"))
    with z.open(name) as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(sys.argv[2] + ".tmp", sys.argv[2])
PYEOF
fi

# 5. smoke test: the emulated Python imports tvm_ffi and numpy
PYTHONPATH="$CACHE/site" qemu-aarch64 -L "$CACHE/sysroot" "$CACHE/sysroot/usr/bin/$PY" \
  -c "import numpy, tvm_ffi; print('arm64 python', numpy.__version__, tvm_ffi.__version__)" >&2
touch "$STAMP"

# 6. aarch64 TVM (runtime only) for `python -m tvm.exec.rpc_server` under emulation, and the python3.11 wrapper
mkdir -p "$CACHE/bin"
cat > "$CACHE/bin/python3.11.tmp" <<WRAPPER
#!/bin/sh
# The arm64 Python 3.11 of the sysroot under qemu-aarch64 (written by .ci/setup_qemu.sh). -0 makes this
# wrapper the emulated Python's sys.executable, so the Pythons it starts are emulated too.
exec qemu-aarch64 -L "$CACHE/sysroot" -0 "\$0" "$CACHE/sysroot/usr/bin/$PY" "\$@"
WRAPPER
chmod +x "$CACHE/bin/python3.11.tmp" && mv "$CACHE/bin/python3.11.tmp" "$CACHE/bin/python3.11"
if [[ ! -f "$RPC_STAMP" ]]; then
  log "aarch64 TVM $TVM_VERSION (runtime only) for the RPC server"
  whl="$(tvm_wheel)"
  rm -rf "$RPC.tmp" && mkdir -p "$RPC.tmp/site" "$RPC.tmp/wheels"
  python3 -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 \
    --no-deps -d "$RPC.tmp/wheels" "ml_dtypes>=0.5" "psutil>=5.9" "cloudpickle>=2"
  python3 - "$whl" "$RPC.tmp/site" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:  # no compiler library (240 MB: tvm then imports runtime-only), no headers
    z.extractall(sys.argv[2], [n for n in z.namelist()
                               if not n.startswith("tvm/3rdparty/") and not n.endswith("/libtvm_compiler.so")])
PYEOF
  for w in "$RPC.tmp/wheels"/*.whl; do python3 -m zipfile -e "$w" "$RPC.tmp/site"; done
  rm -rf "$RPC.tmp/wheels" "$RPC" && mv "$RPC.tmp" "$RPC"
  # smoke test: the emulated Python imports TVM's RPC server (writing the .pyc files once: later starts are
  # faster) and, with libtvm_runtime_extra.so (the server's --load-library), has the random fill that
  # MetaSchedule's RPC runner calls
  PYTHONPATH="$RPC/site:$CACHE/site" "$CACHE/bin/python3.11" -c "
import ctypes, tvm, tvm.exec.rpc_server, tvm_ffi
ctypes.CDLL('$RPC/site/tvm/lib/libtvm_runtime_extra.so', ctypes.RTLD_GLOBAL)
assert tvm_ffi.get_global_func('tvm.contrib.random.random_fill', allow_missing=True) is not None
print('arm64 tvm', tvm.__version__, 'runtime only' if tvm.base._RUNTIME_ONLY else 'with compiler')" >&2
  touch "$RPC_STAMP"
fi
echo "$CACHE"
