"""Bidirectional artifacts are hostile input too: ``load``/``verify`` apply every check of the other kinds.

One schema for the metadata (the ``bidirectional`` entry, each direction's entries; each refusal names its key),
what the directions must agree on (batch sizes, input width, flags as ``tvm_gru.Bidirectional`` requires them),
the declared weights against each direction's config, the ``weights.npz`` members of both directions, SHA-256 of
every file and no unlisted file.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tvm_gru import GRU, Bidirectional
from tvm_gru.runtime.artifact import METADATA, ArtifactError, load, verify

UNITS, INPUT = 6, 3


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    wrapper = Bidirectional(GRU(UNITS, seed=2, return_sequences=True), merge_mode="sum")
    wrapper.build((2, None, INPUT))
    return wrapper, wrapper.export(tmp_path_factory.mktemp("trust_bi") / "bi", batch=2)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def _edit_meta(path: Path, edit) -> None:
    meta = json.loads((path / METADATA).read_text())
    edit(meta)
    (path / METADATA).write_text(json.dumps(meta))


def _parent(meta, dotted):
    *parents, leaf = dotted.split(".")
    for p in parents:
        meta = meta[p]
    return meta, leaf


def _put(dotted, value):
    def edit(meta):
        parent, leaf = _parent(meta, dotted)
        parent[leaf] = value
    return edit


def _drop(dotted):
    def edit(meta):
        parent, leaf = _parent(meta, dotted)
        parent.pop(leaf)
    return edit


SCHEMA = {
    # name: (edit, regex the ArtifactError must match: the key)
    "bidirectional-missing": (_drop("bidirectional"), "entry 'bidirectional' must be a dict"),
    "bidirectional-list": (_put("bidirectional", ["sum"]), "entry 'bidirectional' must be a dict"),
    "merge_mode-missing": (_drop("bidirectional.merge_mode"), "'bidirectional.merge_mode'.*received nothing"),
    "merge_mode-unknown": (_put("bidirectional.merge_mode", "max"),
                           re.escape("'bidirectional.merge_mode' must be one of ['sum', 'mul', 'ave', 'concat', "
                                     "None]")),
    "merge_mode-int": (_put("bidirectional.merge_mode", 3), "'bidirectional.merge_mode'.*received int 3"),
    "name-int": (_put("bidirectional.name", 5), "'bidirectional.name'"),
    "forward-missing": (_drop("forward"), "entry 'forward' must be a dict; received nothing"),
    "backward-list": (_put("backward", []), "entry 'backward' must be a dict; received list"),
    "forward-units-str": (_put("forward.config.units", "6"), "'forward.config.units'"),
    "backward-dtype-int8": (_put("backward.config.dtype", "int8"), "'backward.config.dtype'"),
    "forward-input_dim-missing": (_drop("forward.input_dim"), "'forward.input_dim'"),
    "backward-lanes-zero": (_put("backward.lanes", 0), "'backward.lanes'"),
    "forward-functions-empty": (_put("forward.kernel.functions", {}), "'forward.kernel.functions'"),
    "backward-functions-no-full": (_drop("backward.kernel.functions.2.full"), "'backward.kernel.functions.2.full'"),
    "forward-weights-repeated": (_put("forward.kernel.weights", ["kernel_packed", "kernel_packed"]),
                                 "'forward.kernel.weights' must be a list without repeated entries"),
    "backward-flag-str": (_put("backward.layer.stateful", "yes"), "'backward.layer.stateful' must be a bool"),
    "forward-keras_config-missing": (_drop("forward.keras_config"), "'forward.keras_config'"),
    "forward-shape-str": (_put("forward.shapes.kernel_packed", "x"), "'forward.shapes.kernel_packed'"),
    "library-missing": (_drop("kernel.library"), "'kernel.library'"),
    "weights-missing": (_drop("weights"), "entry 'weights'"),
    "weights-unlisted": (_put("weights", "other.npz"), "entry 'weights' names 'other.npz', which 'files' does not"),
    "batches-differ": (lambda m: m["backward"]["kernel"].update(functions={"3": m["backward"]["kernel"]["functions"]
                                                                          .pop("2")}),
                       re.escape("'backward.kernel.functions' must be functions for the batch sizes of "
                                 "forward.kernel.functions ['2']; received list ['3']")),
    "batch_sizes-differ": (_put("batch_sizes", [1]), "'batch_sizes' must be the batch sizes of forward"),
    "input_dim-differ": (_put("backward.input_dim", INPUT + 1),
                         r"'backward.input_dim' must be forward.input_dim \(3\)"),
    "go_backwards-same": (_put("backward.layer.go_backwards", False),
                          r"'backward.layer.go_backwards' must be the opposite of forward.layer.go_backwards "
                          r"\(False\)"),
    "stateful-differ": (_put("backward.layer.stateful", True), r"'backward.layer.stateful' must be forward.layer"),
    "return_sequences-differ": (_put("backward.layer.return_sequences", False), "'backward.layer.return_sequences'"),
    "format_version-3": (_put("format_version", 3), "a bidirectional artifact needs format version >= 4"),
    "format_version-5": (_put("format_version", 5), "newer than this runtime reads"),
    "weights-declared": (_put("forward.kernel.weights", ["kernel_packed", "recurrent_packed"]),
                         r"forward layer: the kernel weights are \['kernel_packed', 'recurrent_packed'\]; the config"),
    "shape-declared": (_put("backward.shapes.kernel_packed", [1, INPUT, 3, 1]),
                       r"backward layer: weight kernel_packed has shape \(1, 3, 3, 1\) in the metadata"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA))
def test_malformed_metadata_is_refused_naming_the_key(artifact, tmp_path, case):
    edit, match = SCHEMA[case]
    path = _copy(artifact[1], tmp_path / "art")
    _edit_meta(path, edit)
    with pytest.raises(ArtifactError, match=match):
        load(path)


def test_verify_checks_the_same_schema(artifact, tmp_path):
    path = _copy(artifact[1], tmp_path / "art")
    assert verify(path)["kind"] == "bidirectional"
    _edit_meta(path, _put("bidirectional.merge_mode", "max"))
    with pytest.raises(ArtifactError, match="'bidirectional.merge_mode'"):
        verify(path)


def test_a_cuda_target_is_refused(artifact, tmp_path):
    path = _copy(artifact[1], tmp_path / "art")
    _edit_meta(path, lambda m: m["target"].update(family="cuda", arch="sm_80"))
    with pytest.raises(ArtifactError, match="bidirectional artifacts run on CPUs only"):
        load(path)


@pytest.mark.parametrize("rel", ["kernel.so", "weights.npz", "python/tvm_gru_runtime.zip"])
def test_a_modified_file_is_refused(artifact, tmp_path, rel):
    path = _copy(artifact[1], tmp_path / "art")
    blob = bytearray((path / rel).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (path / rel).write_bytes(blob)
    with pytest.raises(ArtifactError, match=f"artifact file {re.escape(rel)} is damaged or was modified"):
        load(path)


def test_an_unlisted_file_is_refused(artifact, tmp_path):
    path = _copy(artifact[1], tmp_path / "art")
    shutil.copyfile(path / "kernel.so", path / "backward.so")  # a second library the metadata does not list
    with pytest.raises(ArtifactError, match=r"holds files its metadata does not list: \['backward.so'\]"):
        load(path)


def _rewrite_weights(path: Path, edit) -> None:
    with np.load(path / "weights.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (path / "weights.npz").write_bytes(buf.getvalue())
    _edit_meta(path, lambda m: m["files"].update({"weights.npz": hashlib.sha256(buf.getvalue()).hexdigest()}))


NPZ_CASES = {
    "backward-missing": (lambda a: [a.pop(k) for k in list(a) if k.startswith("backward.")],
                         r"weights.npz holds the members \[.*\]; the metadata implies exactly "
                         r".*backward.kernel_packed"),
    "unprefixed": (lambda a: a.update(kernel_packed=a.pop("forward.kernel_packed")), "holds the members"),
    "wrong-shape": (lambda a: a.update({"backward.kernel_packed": a["backward.kernel_packed"][:, :2].copy()}),
                    "weight backward.kernel_packed .*"),
    "wrong-dtype": (lambda a: a.update({"forward.bias_packed": a["forward.bias_packed"].astype(np.float64)}),
                    "weight forward.bias_packed .*float32"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_weights_members_of_both_directions_are_checked(artifact, tmp_path, case):
    edit, match = NPZ_CASES[case]
    path = _copy(artifact[1], tmp_path / "art")
    _rewrite_weights(path, edit)
    with pytest.raises(ArtifactError, match=match):
        load(path)


def test_the_weights_are_stored_uncompressed_per_direction(artifact):
    wrapper, path = artifact
    with zipfile.ZipFile(path / "weights.npz") as z:
        infos = z.infolist()
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    assert sorted(i.filename for i in infos) == sorted(f"{side}.{n}.npy" for side in ("forward", "backward")
                                                       for n in ("kernel_packed", "recurrent_packed",
                                                                 "candidate_packed", "bias_packed"))
    deployed = load(path)
    for a, b in zip(deployed.get_weights(), wrapper.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 5, INPUT)).astype("float32")
    y = deployed(x)
    assert y.shape == (2, 5, UNITS) and np.array_equal(y, wrapper(x)) and float(np.abs(y).max()) > 0.01
