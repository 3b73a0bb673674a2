"""The deployed runtime needs only numpy + apache-tvm-ffi: proven in a fresh venv without apache-tvm.

The venv is made with ``python -m venv`` and ``pip install apache-tvm-ffi==0.1.14.post1 numpy`` (pip's own
cache makes it quick after the first time). An artifact exported here (parallel kernels, so the bundled
libtvm_runtime.so is used) is loaded there twice: through ``tvm_gru`` (the repository on PYTHONPATH) and
through the copy of the runtime bundled in the artifact, with numpy and DLPack inputs. A GRU *layer* artifact
(whole-sequence kernels) is run the same two ways: two sequence lengths, a mask, an initial state, and
stateful streaming chunk by chunk; so is a Bidirectional artifact (both directions' kernels in one library),
bit-identical to the in-process wrapper; and so is a whole-model artifact (a Relax VM executable: GRU + Gemm + Softmax).
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
from tvm_gru.deploy.export import export_cell
from tvm_gru.ops import reference

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import gru_gemm_softmax_onnx, tolerance  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

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
    sys.path.insert(0, art + "/python/tvm_gru_runtime.zip")
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


def run_minimal(python, script: str, mode: str, *args, tmp_path) -> str:
    """Run ``script`` in the minimal venv with ``mode`` ("package": tvm_gru from the repository on PYTHONPATH;
    "bundled": the artifact's own loader) and ``args``; returns its stdout (a failure shows its stderr)."""
    path = tmp_path / "run.py"
    path.write_text(script)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "TVM_NUM_THREADS": "2"}
    if mode == "package":
        env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([str(python), str(path), mode, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


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
    out = run_minimal(minimal_venv, SCRIPT, mode, art, inputs, tmp_path / "o.npz", tmp_path=tmp_path)
    info = json.loads(out.strip().splitlines()[-1])
    assert info["tvm_modules"] == []
    with np.load(tmp_path / "o.npz") as got:
        for key in got.files:
            err = float(np.max(np.abs(got[key] - ref)))
            assert err <= tolerance("float32", ref), f"{key}: {err:.3e}"


LAYER_SCRIPT = r"""
import json, sys
import numpy as np
try:
    import tvm  # noqa: F401
    raise SystemExit("apache-tvm is importable in the minimal venv")
except ModuleNotFoundError:
    pass
mode, art, stream_art, inputs, out_path = sys.argv[1:6]
if mode == "package":
    from tvm_gru import load
else:
    sys.path.insert(0, art + "/python/tvm_gru_runtime.zip")
    from tvm_gru_runtime import load
import tvm_ffi
layer = load(art)
data = np.load(inputs)
x, x_long, mask, h0 = data["x"], data["x_long"], data["mask"], data["h0"]
seq, state = layer(x)
seq_long, state_long = layer(tvm_ffi.from_dlpack(x_long))               # another T, a DLPack tensor
seq_masked, state_masked = layer(x, mask=mask, initial_state=[h0])
stream = load(stream_art)
pieces = [stream(x_long[:, a:b]) for a, b in ((0, 1), (1, 2), (2, 5), (5, x_long.shape[1]))]
np.savez(out_path, seq=seq, state=state, seq_long=seq_long, state_long=state_long, seq_masked=seq_masked,
         state_masked=state_masked, streamed=np.concatenate(pieces, axis=1))
print(json.dumps({"tvm_modules": sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")),
                  "type": type(layer).__name__, "runtime_libs": [e["path"] for e in layer.metadata["runtime_libs"]]}))
"""


@pytest.fixture(scope="module")
def layer_artifacts(tmp_path_factory):
    """A return_sequences + return_state layer and its stateful twin (same weights), with in-process results."""
    root = tmp_path_factory.mktemp("layer_art")
    kwargs = dict(reset_after=True, recurrent_activation="sigmoid", return_sequences=True)
    layer = tvm_gru.GRU(128, return_state=True, seed=5, **kwargs)  # two-core schedule on a multi-core host
    layer.build((2, None, 64))
    stream = tvm_gru.GRU(128, stateful=True, seed=5, **kwargs)
    stream.set_weights(layer.get_weights())
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 6, 64)).astype("float32")
    x_long = rng.uniform(-1, 1, (2, 23, 64)).astype("float32")
    mask = np.arange(6)[None, :] < np.array([[6], [4]])
    h0 = rng.uniform(-1, 1, (2, 128)).astype("float32")
    np.savez(root / "inputs.npz", x=x, x_long=x_long, mask=mask, h0=h0)
    expected = {}
    expected["seq"], expected["state"] = layer(x)
    expected["seq_long"], expected["state_long"] = layer(x_long)
    expected["seq_masked"], expected["state_masked"] = layer(x, mask=mask, initial_state=[h0])
    expected["streamed"] = expected["seq_long"]
    # the float64 Keras RNN oracle for the unmasked long sequence
    outs = reference.sequence(layer.cell.config, x_long.transpose(1, 0, 2), np.zeros((2, 128)), *layer.get_weights())
    assert np.max(np.abs(expected["seq_long"] - outs.transpose(1, 0, 2))) <= tolerance("float32", outs)
    art = layer.export(root / "layer", target="host", batch=2)
    stream_art = stream.export(root / "stream", target="host", batch=2)
    return art, stream_art, root / "inputs.npz", expected


@pytest.mark.parametrize("mode", ["package", "bundled"])
def test_minimal_venv_runs_layer_artifact(minimal_venv, layer_artifacts, tmp_path, mode):
    art, stream_art, inputs, expected = layer_artifacts
    out = run_minimal(minimal_venv, LAYER_SCRIPT, mode, art, stream_art, inputs, tmp_path / "o.npz",
                      tmp_path=tmp_path)
    info = json.loads(out.strip().splitlines()[-1])
    assert info["tvm_modules"] == [] and info["type"] == "DeployedGRU"
    assert info["runtime_libs"] == ["lib/libtvm_runtime.so"]
    with np.load(tmp_path / "o.npz") as got:
        assert sorted(got.files) == sorted(expected)
        for key, want in expected.items():
            assert got[key].shape == want.shape
            err = float(np.max(np.abs(got[key] - want)))
            assert err <= 1e-6, f"{key}: {err:.3e}"


BIDIRECTIONAL_SCRIPT = r"""
import json, pickle, sys
import numpy as np
try:
    import tvm  # noqa: F401
    raise SystemExit("apache-tvm is importable in the minimal venv")
except ModuleNotFoundError:
    pass
mode, art, inputs, out_path = sys.argv[1:5]
if mode == "package":
    from tvm_gru import load
else:
    sys.path.insert(0, art + "/python/tvm_gru_runtime.zip")
    from tvm_gru_runtime import load
import tvm_ffi
wrapper = load(art)
data = np.load(inputs)
x, x_long, mask, h_fw, h_bw = (data[k] for k in ("x", "x_long", "mask", "h_fw", "h_bw"))
outs = {}
outs["y"], outs["h_fw"], outs["h_bw"] = wrapper(x)
outs["y_long"], _, _ = wrapper(tvm_ffi.from_dlpack(x_long))                    # another T, a DLPack tensor
outs["y_masked"], outs["h_fw_masked"], outs["h_bw_masked"] = wrapper(x, mask=mask, initial_state=[h_fw, h_bw])
try:
    pickle.dumps(wrapper)
    raise SystemExit("a deployed Bidirectional was pickled")
except TypeError:
    pass
np.savez(out_path, **outs)
print(json.dumps({"tvm_modules": sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")),
                  "type": type(wrapper).__name__,
                  "runtime_libs": [e["path"] for e in wrapper.metadata["runtime_libs"]]}))
"""


@pytest.mark.parametrize("mode", ["package", "bundled"])
def test_minimal_venv_runs_bidirectional_artifact(minimal_venv, tmp_path_factory, tmp_path, mode):
    root = tmp_path_factory.mktemp("bidirectional_art")
    layer = tvm_gru.GRU(128, return_sequences=True, return_state=True, seed=6)  # two-core schedule, as above
    wrapper = tvm_gru.Bidirectional(layer, merge_mode="concat")
    wrapper.build((2, None, 64))
    rng = np.random.default_rng(2)
    feeds = {"x": rng.uniform(-1, 1, (2, 6, 64)).astype("float32"),
             "x_long": rng.uniform(-1, 1, (2, 23, 64)).astype("float32"),
             "mask": np.arange(6)[None, :] < np.array([[6], [3]]),
             "h_fw": rng.uniform(-1, 1, (2, 128)).astype("float32"),
             "h_bw": rng.uniform(-1, 1, (2, 128)).astype("float32")}
    np.savez(root / "inputs.npz", **feeds)
    expected = {}
    expected["y"], expected["h_fw"], expected["h_bw"] = wrapper(feeds["x"])
    expected["y_long"] = wrapper(feeds["x_long"])[0]
    expected["y_masked"], expected["h_fw_masked"], expected["h_bw_masked"] = wrapper(
        feeds["x"], mask=feeds["mask"], initial_state=[feeds["h_fw"], feeds["h_bw"]])
    art = wrapper.export(root / "bi", target="host", batch=2)
    out = run_minimal(minimal_venv, BIDIRECTIONAL_SCRIPT, mode, art, root / "inputs.npz", tmp_path / "o.npz",
                      tmp_path=tmp_path)
    info = json.loads(out.strip().splitlines()[-1])
    assert info["tvm_modules"] == [] and info["type"] == "DeployedBidirectional"
    assert info["runtime_libs"] == ["lib/libtvm_runtime.so"]
    with np.load(tmp_path / "o.npz") as got:
        assert sorted(got.files) == sorted(expected)
        for key, want in expected.items():
            assert got[key].shape == want.shape and got[key].dtype == want.dtype, key
            assert np.array_equal(got[key], want), f"{key}: {float(np.max(np.abs(got[key] - want))):.3e}"
    assert expected["y"].shape == (2, 6, 256) and float(np.abs(expected["y"]).max()) > 0.05


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


MODEL_SCRIPT = r"""
import sys
import numpy as np
try:
    import tvm  # noqa: F401
    raise SystemExit("apache-tvm is importable in the minimal venv")
except ModuleNotFoundError:
    pass
mode, art, inputs, out_path = sys.argv[1:5]
if mode == "package":
    from tvm_gru import load
else:
    sys.path.insert(0, art + "/python/tvm_gru_runtime.zip")
    from tvm_gru_runtime import load
model = load(art)
data = np.load(inputs)
outs = {}
for key in data.files:
    probs, y = model(data[key])
    outs[key + "_probs"], outs[key + "_y"] = probs, y
np.savez(out_path, **outs)
assert not [m for m in sys.modules if m == "tvm" or m.startswith("tvm.")]
"""


@pytest.mark.parametrize("mode", ["package", "bundled"])
def test_minimal_venv_runs_model_artifact(minimal_venv, tmp_path, mode):
    model = tvm_gru.Model.from_onnx(gru_gemm_softmax_onnx(), batch=[1, 2])
    art = model.export(tmp_path / "model")
    rng = np.random.default_rng(1)
    feeds = {"t3_b2": rng.uniform(-1, 1, (3, 2, 5)).astype("float32"),
             "t9_b1": rng.uniform(-1, 1, (9, 1, 5)).astype("float32")}
    np.savez(tmp_path / "inputs.npz", **feeds)
    run_minimal(minimal_venv, MODEL_SCRIPT, mode, art, tmp_path / "inputs.npz", tmp_path / "o.npz", tmp_path=tmp_path)
    with np.load(tmp_path / "o.npz") as got:
        for key, x in feeds.items():
            probs, y = model(x)
            np.testing.assert_array_equal(got[key + "_probs"], probs)
            np.testing.assert_array_equal(got[key + "_y"], y)
