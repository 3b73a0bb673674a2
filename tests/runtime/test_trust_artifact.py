"""Artifacts are hostile input: ``load``/``verify`` load exactly what was verified, from inside the folder only.

What is hashed is what is loaded (a file swapped after its hash was taken is not used); every path in the
metadata is plain, relative and listed; links, FIFOs, sockets and unlisted files (``__pycache__`` included)
refuse the folder; the bundled loader is imported without reading or writing bytecode; the metadata passes one
schema (each refusal names its key); kernels that need the TVM runtime are refused when no runtime is listed or
loaded (instead of crashing on the first call); ``weights.npz`` is checked in its zip directory and .npy
headers before any data is read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import marshal
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tvm_gru
from tvm_gru.deploy.export import export_cell
from tvm_gru.runtime import artifact
from tvm_gru.runtime.artifact import METADATA, ArtifactError, load, verify

UNITS, INPUT = 8, 4
PACKAGE_ROOT = Path(tvm_gru.__file__).resolve().parent.parent  # the tvm_gru under test, for subprocesses


def _cell(activation="tanh", seed=0):
    cell = tvm_gru.GRUCell(UNITS, activation=activation, seed=seed)
    cell.build((1, INPUT))
    return cell


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """Two cells of one shape whose kernels differ (tanh / relu), a third with other weights, and a layer."""
    root = tmp_path_factory.mktemp("trust")
    tanh, relu, other = _cell(), _cell("relu"), _cell(seed=7)
    layer = tvm_gru.GRU(UNITS, seed=1, return_sequences=True)
    layer.build((2, None, INPUT))
    return {"tanh": (tanh, export_cell(tanh, root / "tanh")), "relu": (relu, export_cell(relu, root / "relu")),
            "other": (other, export_cell(other, root / "other")),
            "layer": (layer, layer.export(root / "layer", batch=2))}


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def _meta(path: Path) -> dict:
    return json.loads((path / METADATA).read_text())


def _write_meta(path: Path, meta) -> None:
    (path / METADATA).write_text(json.dumps(meta))


def _rehash(path: Path, rel: str) -> None:
    meta = _meta(path)
    meta["files"][rel] = hashlib.sha256((path / rel).read_bytes()).hexdigest()
    _write_meta(path, meta)


def _step(cell, deployed):
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (1, INPUT)).astype("float32")
    h = rng.uniform(-1, 1, (1, UNITS)).astype("float32")
    return deployed(x, [h])[0], cell(x, [h])[0]


def _bundled_loader_entry(art: Path) -> Path:
    """The sys.path entry the export documents for the artifact's own loader (a zip; folders before it)."""
    zipped = art / "python" / "tvm_gru_runtime.zip"
    return zipped if zipped.exists() else art / "python"


# ------------------------------------------------------------------------------------ hashed == loaded
class _SwapAfterHash:
    """Stands in for ``hashlib`` in the loader: once the digest of the watched file has been computed, the file
    on disk is replaced by another (as a racing writer would do between the check and the load)."""

    def __init__(self, digest: str, path: Path, replacement: Path):
        self.digest, self.path, self.replacement, self.swapped = digest, path, replacement, False

    def sha256(self, *args):
        real, owner = hashlib.sha256(*args), self

        class Digest:
            def update(self, data):
                real.update(data)

            def hexdigest(self):
                value = real.hexdigest()
                if value == owner.digest and not owner.swapped:
                    tmp = owner.path.with_name(owner.path.name + ".swap")
                    shutil.copyfile(owner.replacement, tmp)
                    os.replace(tmp, owner.path)
                    owner.swapped = True
                return value

        return Digest()


@pytest.mark.parametrize("rel, source", [("kernel.so", "relu"), ("weights.npz", "other")],
                         ids=["kernel-swapped", "weights-swapped"])
def test_a_file_swapped_after_its_hash_is_not_loaded(cells, tmp_path, monkeypatch, rel, source):
    cell, original = cells["tanh"]
    path = _copy(original, tmp_path / "art")
    swap = _SwapAfterHash(_meta(path)["files"][rel], path / rel, cells[source][1] / rel)
    monkeypatch.setattr(artifact, "hashlib", swap)
    try:
        deployed = load(path)
    except ArtifactError:
        return  # refusing is fine too; loading the swapped file is not
    assert swap.swapped, "the loader never hashed the file"
    got, want = _step(cell, deployed)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


# ------------------------------------------------------------------------------------ paths in the metadata
def _outside_copy(path: Path, rel: str) -> str:
    outside = path.parent / f"outside_{Path(rel).name}"
    shutil.copyfile(path / rel, outside)
    return str(outside)


def _set(meta, dotted, value):
    *parents, leaf = dotted.split(".")
    for p in parents:
        meta = meta[p]
    meta[leaf] = value


PATH_CASES = {
    # name: (edit(meta, artifact path), the key the error must name)
    "library-absolute": (lambda m, p: _set(m, "kernel.library", _outside_copy(p, "kernel.so")), "kernel.library"),
    "library-dotdot": (lambda m, p: (_outside_copy(p, "kernel.so"),
                                     _set(m, "kernel.library", "../outside_kernel.so")), "kernel.library"),
    "library-dot": (lambda m, p: _set(m, "kernel.library", "./kernel.so"), "kernel.library"),
    "library-backslash": (lambda m, p: _set(m, "kernel.library", "lib\\..\\kernel.so"), "kernel.library"),
    "library-unlisted": (lambda m, p: _set(m, "kernel.library", "lib/other.so"), "kernel.library"),
    "weights-absolute": (lambda m, p: _set(m, "weights", _outside_copy(p, "weights.npz")), "weights"),
    "runtime-lib-absolute": (lambda m, p: _set(m, "runtime_libs", [{"path": _outside_copy(p, "weights.npz"),
                                                                      "provides": None}]), "runtime_libs[0].path"),
    "runtime-lib-unlisted": (lambda m, p: _set(m, "runtime_libs", [{"path": "lib/libtvm_runtime.so"}]),
                             "runtime_libs[0].path"),
    "files-dotdot": (lambda m, p: m["files"].update({"../outside_kernel.so": m["files"]["kernel.so"]}),
                     "files['../outside_kernel.so']"),
    "files-absolute": (lambda m, p: m["files"].update({"/etc/hostname": "0" * 64}), "files['/etc/hostname']"),
    "files-trailing-slash": (lambda m, p: m["files"].update({"lib/": "0" * 64}), "files['lib/']"),
}


@pytest.mark.parametrize("case", sorted(PATH_CASES))
def test_metadata_paths_must_be_plain_listed_and_inside(cells, tmp_path, case):
    edit, key = PATH_CASES[case]
    path = _copy(cells["tanh"][1], tmp_path / "art")
    meta = _meta(path)
    edit(meta, path)
    _write_meta(path, meta)
    with pytest.raises(ArtifactError, match=re.escape(key)):
        load(path)


# ------------------------------------------------------------------------------------ what the folder holds
def _fifo(path: Path) -> None:
    os.mkfifo(path / "lib" / "pipe")


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path / "s"))
    sock.close()


def _link_dir(path: Path) -> None:
    outside = path.parent / "outside_lib"
    (path / "lib").rename(outside)
    (path / "lib").symlink_to(outside)


def _link_metadata(path: Path) -> None:
    outside = path.parent / "outside.json"
    (path / METADATA).rename(outside)
    (path / METADATA).symlink_to(outside)


FOLDER_CASES = {
    "link-inside": (lambda p: (p / "alias.so").symlink_to("kernel.so"), "symbolic link"),
    "link-loop": (lambda p: (p / "loop").symlink_to("loop"), "symbolic link"),
    "linked-folder": (_link_dir, "symbolic link"),
    "linked-metadata": (_link_metadata, "without following links"),
    "fifo": (_fifo, "FIFO"),
    "socket": (_socket, "socket"),
    "pycache": (lambda p: (p / "python" / "__pycache__").mkdir() or (p / "python" / "__pycache__" / "x.pyc")
                .write_bytes(b"\0" * 16), r"does not list: \['python/__pycache__/x.pyc'\].*__pycache__"),
}


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_links_special_files_and_unlisted_files_are_refused(cells, tmp_path, case):
    damage, match = FOLDER_CASES[case]
    path = _copy(cells["tanh"][1], tmp_path / "art")
    damage(path)

    def hung(*_):
        raise TimeoutError("the loader blocked (opened a FIFO?)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        for check in (verify, load):
            with pytest.raises(ArtifactError, match=match):
                check(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------ the bundled loader
_IMPORT_BUNDLED = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tvm_gru_runtime
    try:
        cell = tvm_gru_runtime.load(sys.argv[2])
    except tvm_gru_runtime.ArtifactError as err:
        print("ArtifactError:", err)
        raise SystemExit(0)
    out, _ = cell(np.full((1, %d), 0.5, "float32"), [np.zeros((1, %d), "float32")])
    np.save(sys.argv[3], out)
""" % (INPUT, UNITS))


def _run_bundled(art: Path, tmp_path: Path, out: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH",
                                                            "PYTHONPYCACHEPREFIX")}
    return subprocess.run([sys.executable, "-c", _IMPORT_BUNDLED, str(_bundled_loader_entry(art)), str(art),
                           str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                          check=False)


def _pyc(source_stat, payload: str) -> bytes:
    """A timestamp .pyc whose header matches the source's mtime and size, so CPython would use it."""
    header = importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, int(source_stat.st_mtime) & 0xFFFFFFFF,
                                                        source_stat.st_size & 0xFFFFFFFF)
    return header + marshal.dumps(compile(payload, "<planted>", "exec"))


def test_planted_bytecode_does_not_run_when_the_bundled_loader_is_imported(cells, tmp_path):
    art = _copy(cells["tanh"][1], tmp_path / "art")
    marker = tmp_path / "PAYLOAD_RAN"
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    package = art / "python" / "tvm_gru_runtime"
    modules = ["__init__", "artifact", "arrays", "buffers", "deployed_layer", "ffi_args", "layer_calls",
               "verified_files"]
    (package / "__pycache__").mkdir(parents=True, exist_ok=True)
    planted = []
    for name in modules:  # where a folder import would look: with a header valid for the source if there is one
        source = package / f"{name}.py"
        stat = source.stat() if source.exists() else os.stat(art / METADATA)
        pyc = package / "__pycache__" / f"{name}.{sys.implementation.cache_tag}.pyc"
        pyc.write_bytes(_pyc(stat, payload))
        planted.append(pyc)
    proc = _run_bundled(art, tmp_path, tmp_path / "out.npy")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists(), "a planted .pyc ran when the bundled loader was imported"
    assert "does not list" in proc.stdout and "__pycache__" in proc.stdout, proc.stdout
    with pytest.raises(ArtifactError, match="does not list"):
        verify(art)


def test_importing_the_bundled_loader_writes_no_bytecode(cells, tmp_path):
    cell, original = cells["tanh"]
    art = _copy(original, tmp_path / "art")
    proc = _run_bundled(art, tmp_path, tmp_path / "out.npy")
    assert proc.returncode == 0 and "ArtifactError" not in proc.stdout, proc.stdout + proc.stderr[-2000:]
    written = sorted(str(p.relative_to(art)) for p in art.rglob("*") if "__pycache__" in p.parts)
    assert written == [], f"importing the bundled loader wrote into the artifact: {written}"
    verify(art)
    want = cell(np.full((1, INPUT), 0.5, "float32"), [np.zeros((1, UNITS), "float32")])[0]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, rtol=0, atol=2e-5)


# ------------------------------------------------------------------------------------ the metadata schema
def _drop(dotted):
    def edit(meta):
        *parents, leaf = dotted.split(".")
        for p in parents:
            meta = meta[p]
        meta.pop(leaf)
    return edit


def _put(dotted, value):
    return lambda meta: _set(meta, dotted, value)


def _nest(depth):
    """JSON arrays nested ``depth`` deep in place of the (informational) versions entry; spliced in as text."""
    return lambda meta: meta.update(versions=f"__NEST_{depth}__")


def _write_nested(path: Path, meta) -> None:
    text = json.dumps(meta)
    found = re.search(r'"__NEST_(\d+)__"', text)
    if found:
        depth = int(found.group(1))
        text = text.replace(found.group(0), "[" * depth + "]" * depth)
    (path / METADATA).write_text(text)


CELL_SCHEMA = {
    # name: (edit, regex the ArtifactError must match: the key)
    "format_version-bool": (_put("format_version", True), "'format_version'"),
    "format_version-str": (_put("format_version", "1"), "'format_version'"),
    "format_version-zero": (_put("format_version", 0), "'format_version'"),
    "config-list": (_put("config", [8]), "'config'"),
    "units-missing": (_drop("config.units"), "'config.units'"),
    "units-str": (_put("config.units", "8"), "'config.units'"),
    "units-zero": (_put("config.units", 0), "'config.units'"),
    "dtype-int8": (_put("config.dtype", "int8"), "'config.dtype'"),
    "reset_after-str": (_put("config.reset_after", "yes"), "'config.reset_after'"),
    "use_bias-missing": (_drop("config.use_bias"), "'config.use_bias'"),
    "implementation-3": (_put("config.implementation", 3), "'config.implementation'"),
    "dropout-str": (_put("config.dropout", "0.5"), "'config.dropout'"),
    "dropout-2": (_put("config.dropout", 2.0), "'config.dropout'"),
    "lanes-zero": (_put("lanes", 0), "'lanes'"),
    "lanes-bool": (_put("lanes", True), "'lanes'"),
    "lanes-negative": (_put("lanes", -8), "'lanes'"),
    "input_dim-str": (_put("input_dim", "4"), "'input_dim'"),
    "input_dim-missing": (_drop("input_dim"), "'input_dim'"),
    "kernel-missing": (_drop("kernel"), "'kernel'"),
    "library-missing": (_drop("kernel.library"), "'kernel.library'"),
    "library-int": (_put("kernel.library", 5), "'kernel.library'"),
    "functions-missing": (_drop("kernel.functions"), "'kernel.functions'"),
    "functions-empty": (_put("kernel.functions", {}), "'kernel.functions'"),
    "functions-bad-batch": (_put("kernel.functions", {"x": "step_b1"}), re.escape("kernel.functions['x']")),
    "functions-int-name": (_put("kernel.functions", {"1": 5}), "'kernel.functions.1'"),
    "weight-names-str": (_put("kernel.weights", "kernel_packed"), "'kernel.weights'"),
    "weight-names-empty": (_put("kernel.weights", []), "'kernel.weights'"),
    "weight-names-repeated": (_put("kernel.weights", ["kernel_packed", "kernel_packed"]), "'kernel.weights'"),
    "weights-int": (_put("weights", 7), "'weights'"),
    "files-list": (_put("files", []), "'files'"),
    "files-bad-digest": (lambda m: m["files"].update({"kernel.so": "not-a-digest"}), "'files.kernel.so'"),
    "shapes-missing": (_drop("shapes"), "'shapes'"),
    "shape-str": (_put("shapes.kernel_packed", "x"), "'shapes.kernel_packed'"),
    "shape-negative": (_put("shapes.kernel_packed", [-1, 4, 3, 8]), re.escape("shapes.kernel_packed[0]")),
    "shape-names": (_put("shapes.kernel_packed", ["batch", 4]), "'shapes.kernel_packed'"),
    "family-unknown": (_put("target.family", "sparc"), "'target.family'"),
    "host_arch-missing": (_drop("target.host_arch"), "'target.host_arch'"),
    "cpu_features-str": (_put("target.cpu_features", "avx2"), "'target.cpu_features'"),
    "cuda-arch-bad": (_put("target.arch", "sm_x"), "'target.arch'"),
    "runtime_libs-str": (_put("runtime_libs", "lib"), "'runtime_libs'"),
    "runtime_libs-int-entry": (_put("runtime_libs", [5]), re.escape("'runtime_libs[0]'")),
    "runtime_libs-no-path": (_put("runtime_libs", [{"provides": "x"}]), re.escape("runtime_libs[0].path")),
    "runtime_libs-int-provides": (_put("runtime_libs", [{"path": "kernel.so", "provides": 5}]),
                                  re.escape("runtime_libs[0].provides")),
    "weight_dtype-int8": (_put("weight_dtype", "int8"), "weight_dtype"),
    "kind-int": (_put("kind", 5), "kind 5"),
    "json-deep": (_nest(100_000), "not readable JSON|deeper than"),
    "json-nested-100": (_nest(100), "nests JSON deeper than 64"),
}

LAYER_SCHEMA = {
    "layer-missing": (_drop("layer"), "'layer'"),
    "layer-flag-str": (_put("layer.stateful", "yes"), "'layer.stateful'"),
    "functions-str": (_put("kernel.functions.2", "seq_b2"), "'kernel.functions.2'"),
    "functions-no-full": (_drop("kernel.functions.2.full"), "'kernel.functions.2.full'"),
    "short_steps-str": (_put("kernel.functions.2.short_steps", "3"), "'kernel.functions.2.short_steps'"),
    "keras_config-missing": (_drop("keras_config"), "'keras_config'"),
    "layer-lanes-zero": (_put("lanes", 0), "'lanes'"),
}


@pytest.mark.parametrize("kind, case", [("tanh", c) for c in sorted(CELL_SCHEMA)]
                         + [("layer", c) for c in sorted(LAYER_SCHEMA)])
def test_malformed_metadata_is_refused_naming_the_key(cells, tmp_path, kind, case):
    edit, match = (CELL_SCHEMA if kind == "tanh" else LAYER_SCHEMA)[case]
    path = _copy(cells[kind][1], tmp_path / "art")
    meta = _meta(path)
    edit(meta)
    _write_nested(path, meta)
    with pytest.raises(ArtifactError, match=match):
        load(path)


def test_oversized_metadata_is_refused_before_parsing(cells, tmp_path):
    path = _copy(cells["tanh"][1], tmp_path / "art")
    meta = _meta(path)
    meta["versions"] = {"padding": "x" * (5 << 20)}
    _write_meta(path, meta)
    with pytest.raises(ArtifactError, match=r"tvm_gru_artifact.json.*holds \d+ bytes; expected at most"):
        verify(path)


# ------------------------------------------------------------------------------------ runtime libraries
_CALL_LAYER = textwrap.dedent("""
    import sys
    import numpy as np
    from tvm_gru.runtime.artifact import ArtifactError, load
    assert "tvm" not in sys.modules
    try:
        layer = load(sys.argv[1])
        layer(np.ones((2, 3, %d), "float32"))
    except ArtifactError as err:
        print("ArtifactError:", err)
    else:
        print("ran")
""" % INPUT)


def test_a_kernel_needing_an_unlisted_tvm_runtime_is_refused(cells, tmp_path):
    """A layer kernel calls the TVM runtime's workspace functions: without the runtime listed (and none in the
    process) the load is refused, not crashed on the first call. Run in a fresh process without TVM."""
    path = _copy(cells["layer"][1], tmp_path / "art")
    meta = _meta(path)
    assert meta["runtime_libs"], "this layer artifact was expected to bundle the TVM runtime"
    for entry in meta.pop("runtime_libs"):
        meta["files"].pop(entry["path"])
        (path / entry["path"]).unlink()
    _write_meta(path, meta)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    proc = subprocess.run([sys.executable, "-c", _CALL_LAYER, str(path)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, f"the process died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert "ArtifactError" in proc.stdout and "TVMBackendAllocWorkspace" in proc.stdout, proc.stdout


# ------------------------------------------------------------------------------------ weights.npz
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def _rewrite_weights(path: Path, members: dict, compress=zipfile.ZIP_STORED) -> None:
    """Write weights.npz with these member bytes ({name.npy: bytes}) and record its hash."""
    with zipfile.ZipFile(path / "weights.npz", "w", compression=compress) as z:
        for name, data in members.items():
            z.writestr(name, data)
    _rehash(path, "weights.npz")


def _weights(path: Path) -> dict:
    with np.load(path / "weights.npz") as data:
        return {f"{k}.npy": data[k] for k in data.files}


def test_a_weights_zip_bomb_is_refused_from_its_directory(cells, tmp_path):
    """A member that declares a 32 MB array of zeros (32 kB compressed) is refused before it is inflated."""
    path = _copy(cells["tanh"][1], tmp_path / "art")
    members = {k: _npy(v) for k, v in _weights(path).items()}
    members["kernel_packed.npy"] = _npy(np.zeros((4096, 2048), "float32"))
    _rewrite_weights(path, members, zipfile.ZIP_DEFLATED)
    assert (path / "weights.npz").stat().st_size < 1 << 20
    del members
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match=r"weight kernel_packed \(member kernel_packed.npy\) is \d+ bytes"):
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak / 1e6:.0f} MB were allocated to refuse a {UNITS}-unit cell's weights"


def _member_edit(name, make):
    def edit(members):
        members[name] = make(members[name])
    return edit


NPZ_CASES = {
    "extra-member": (lambda m: m.update({"payload.npy": np.zeros(3, "float32")}), r"holds the members"),
    "missing-member": (lambda m: m.pop("bias_packed.npy"), r"holds the members"),
    "float64-member": (_member_edit("kernel_packed.npy", lambda a: a.astype("float64")), "kernel_packed"),
    "big-endian-member": (_member_edit("kernel_packed.npy", lambda a: a.astype(">f4")), "kernel_packed"),
    "fortran-member": (_member_edit("kernel_packed.npy", np.asfortranarray), "kernel_packed .*Fortran order"),
    "object-member": (_member_edit("bias_packed.npy", lambda a: a.astype(object)), "bias_packed"),
    "reshaped-member": (_member_edit("bias_packed.npy", lambda a: a.reshape(-1)), "bias_packed"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_weights_members_are_checked_before_reading(cells, tmp_path, case):
    edit, match = NPZ_CASES[case]
    path = _copy(cells["tanh"][1], tmp_path / "art")
    arrays = _weights(path)
    edit(arrays)
    members = {}
    for name, array in arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, array, allow_pickle=True)
        members[name] = buf.getvalue()
    _rewrite_weights(path, members)
    with pytest.raises(ArtifactError, match=match):
        load(path)


def test_a_truncated_member_is_refused(cells, tmp_path):
    path = _copy(cells["tanh"][1], tmp_path / "art")
    members = {k: _npy(v) for k, v in _weights(path).items()}
    members["kernel_packed.npy"] = members["kernel_packed.npy"][:-4]
    _rewrite_weights(path, members)
    with pytest.raises(ArtifactError, match="kernel_packed"):
        load(path)


def test_the_loaded_numbers_match_after_all_checks(cells):
    """The checks refuse damage, not good artifacts: a cell and a layer load and match in-process numbers."""
    cell, path = cells["tanh"]
    got, want = _step(cell, load(path))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    layer, lpath = cells["layer"]
    x = np.random.default_rng(4).uniform(-1, 1, (2, 5, INPUT)).astype("float32")
    np.testing.assert_allclose(load(lpath)(x), layer(x), rtol=0, atol=2e-5)
