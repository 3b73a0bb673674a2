"""The deployed runtime needs only numpy + apache-tvm-ffi: proven in a fresh venv without apache-tvm.

The venv is made with ``python -m venv`` and ``pip install apache-tvm-ffi==0.1.14.post1 numpy`` (pip's own
cache makes it quick after the first time). An artifact exported here (parallel kernels, so the bundled
libtvm_runtime.so is used) is loaded there twice: through ``tvm_gru`` (the repository on PYTHONPATH) and
through the copy of the runtime bundled in the artifact, with numpy and DLPack inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_gru
from tvm_gru import reference
from tvm_gru.export import export_cell

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tolerance  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys
import numpy as np
try:
    import tvm  # noqa: F401
    raise SystemExit("apache-tvm is importable in the minimal venv")
except ModuleNotFoundError:
    pass
mode, art, inputs, out_path = sys.argv[1:5]
if mode == "package":
    import tvm_gru
    load = getattr(tvm_gru, "load", None)
    if load is None:
        from tvm_gru.runtime.artifact import load
else:
    sys.path.insert(0, art + "/python")
    from tvm_gru_runtime import load
import tvm_ffi
cell = load(art)
data = np.load(inputs)
x, h = data["x"], data["h"]
out, [h2] = cell(x, [h])
out_dl, new = cell(tvm_ffi.from_dlpack(x), tvm_ffi.from_dlpack(h))     # DLPack tensors, bare state
out_view, _ = cell(x[:, :], [np.asfortranarray(h)])                      # views and other layouts
x_off = np.empty(x.size + 1, x.dtype)[1:].reshape(x.shape); x_off[...] = x  # not 64-byte aligned
out_off, _ = cell(x_off, [h])
assert h2 is out and new is out_dl
np.savez(out_path, out=out, out_dl=out_dl, out_view=out_view, out_off=out_off)
print(json.dumps({"tvm_modules": sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")),
                  "runtime_libs": [e["path"] for e in cell.metadata["runtime_libs"]]}))
"""


@pytest.fixture(scope="module")
def minimal_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Install with this interpreter's pip into the venv's site-packages: no ensurepip, fast with pip's cache.
    site = next((venv / "lib").glob("python3*/site-packages"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(site),
           "apache-tvm-ffi==0.1.14.post1", f"numpy=={np.__version__}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"could not install apache-tvm-ffi + numpy into a venv: {proc.stderr[-400:]}")
    return python


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("art")
    cell = tvm_gru.GRUCell(256, seed=3)  # big enough for the parallel schedule on a multi-core host
    cell.build((2, 128))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 128)).astype("float32")
    h = rng.uniform(-1, 1, (2, 256)).astype("float32")
    np.savez(root / "inputs.npz", x=x, h=h)
    art = export_cell(cell, root / "gru", target="host", batch=(1, 2))
    return art, root / "inputs.npz", reference.step(cell.config, x, h, *cell.get_weights())


@pytest.mark.parametrize("mode", ["package", "bundled"])
def test_minimal_venv_runs_artifact(minimal_venv, host_artifact, tmp_path, mode):
    art, inputs, ref = host_artifact
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "TVM_NUM_THREADS": "2"}
    if mode == "package":
        env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([str(minimal_venv), str(script), mode, str(art), str(inputs), str(tmp_path / "o.npz")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["tvm_modules"] == []
    with np.load(tmp_path / "o.npz") as got:
        for key in got.files:
            err = float(np.max(np.abs(got[key] - ref)))
            assert err <= tolerance("float32", ref), f"{key}: {err:.3e}"


def test_runtime_package_imports_only_numpy_and_tvm_ffi():
    """Static check of every module under tvm_gru/runtime: stdlib, numpy, tvm_ffi and relative imports only."""
    import ast  # noqa: PLC0415

    allowed = {"numpy", "tvm_ffi", "__future__"} | set(sys.stdlib_module_names)
    for path in (REPO / "tvm_gru" / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
