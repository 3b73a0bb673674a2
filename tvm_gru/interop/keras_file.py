"""Read a saved Keras model (tf_keras 2.x ``.h5`` or ``.keras``) without TensorFlow: its config and its weights.

* ``.h5`` (legacy HDF5): the root attribute ``model_config`` (JSON), weights in ``model_weights/<layer>``, in the
  order of that group's ``weight_names`` attribute.
* ``.keras`` (tf_keras saving_lib): a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``. The
  weights file does not use layer names: a model's layers are stored under ``layers/<class in snake case>``,
  numbered per class in the order of the model's layer list (``gru``, ``gru_1``, ... whatever the layers are
  called), each object's variables under ``<path>/vars/0, 1, ...``; a GRU's variables belong to its cell
  (``<path>/cell/vars``), a Bidirectional's to ``forward_layer/cell`` and ``backward_layer/cell``, a
  TimeDistributed's to ``layer``.

Every file is untrusted: the format is decided by its magic bytes, sizes are bounded (file, config JSON, zip
members, each weight array), only plain numeric HDF5 datasets reached through hard links are read (no external
storage, no virtual datasets), zip member names are checked, and nothing is unpickled or evaluated. Errors are
ValueError naming the file and what was wrong. Needs ``h5py`` (``pip install tvm_gru[keras]``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["KerasModelFile", "read_keras", "keras_path_name", "LIMITS"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
LIMITS = {"file_bytes": 2 << 30, "config_bytes": 16 << 20, "weights_bytes": 2 << 30, "members": 64,
          "array_bytes": 1 << 30, "layers": 10_000, "compression_ratio": 200}
# Where a .keras file keeps a layer's variables, below the layer's path (default: ["vars"]).
_VAR_GROUPS = {"GRU": ["cell/vars"], "RNN": ["cell/vars"], "LSTM": ["cell/vars"], "SimpleRNN": ["cell/vars"],
               "Bidirectional": ["forward_layer/cell/vars", "backward_layer/cell/vars"],
               "TimeDistributed": ["layer/vars"]}


@dataclasses.dataclass(frozen=True)
class KerasModelFile:
    """A saved Keras model as plain Python data.

    Attributes
    ----------
    path : str
    format : {"h5", "keras"}
    config : dict
        ``{"class_name": "Sequential" | "Functional" | "Model", "config": {...}}`` as Keras serialises it.
    weights : dict
        ``{layer name: [numpy arrays]}`` in the layer's Keras weight order (``layer.get_weights()``), for every
        layer that has weights.
    keras_version : str
    """
    path: str
    format: str
    config: dict
    weights: dict
    keras_version: str

    def layer_configs(self) -> list:
        """The model's layer entries (``{"class_name", "config", ...}``), in config order."""
        return self.config["config"]["layers"]


def keras_path_name(class_name: str) -> str:
    """tf_keras ``generic_utils.to_snake_case``: ``"GRU"`` -> ``"gru"``, ``"TimeDistributed"`` ->
    ``"time_distributed"``, ``"Conv1D"`` -> ``"conv1d"``."""
    intermediate = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", intermediate).lower()
    return name if not name.startswith("_") else "private" + name


def _h5py():
    try:
        import h5py  # noqa: PLC0415  (an optional dependency: the keras extra)
    except ImportError as err:
        raise ImportError("reading Keras model files needs h5py: pip install 'tvm_gru[keras]'") from err
    return h5py


def _fail(path, message: str):
    return ValueError(f"Keras model file {path}: {message}")


def _parse_json(path, raw: bytes, what: str):
    if len(raw) > LIMITS["config_bytes"]:
        raise _fail(path, f"{what} is {len(raw)} bytes; at most {LIMITS['config_bytes']} are read")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _fail(path, f"{what} is not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(value, dict):
        raise _fail(path, f"{what} must be a JSON object; received {type(value).__name__}")
    return value


def _check_version(path, version: str) -> str:
    """Refuse files written by Keras 3 (another config and weights layout)."""
    major = version.split(".", 1)[0]
    if major.isdigit() and int(major) >= 3:
        raise _fail(path, f"was saved by Keras {version}; tvm_gru reads tf_keras 2.x files (save the model with "
                          "tf_keras: TF_USE_LEGACY_KERAS=1)")
    return version


def _check_model_config(path, config: dict) -> dict:
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):
        raise _fail(path, f"the model's class is {config.get('class_name')!r}; expected 'Sequential', 'Functional' "
                          "or 'Model' (a subclassed model has no config to rebuild it from)")
    inner = config.get("config")
    if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
        raise _fail(path, "the model config has no 'layers' list")
    layers = inner["layers"]
    if len(layers) > LIMITS["layers"]:
        raise _fail(path, f"the model has {len(layers)} layers; at most {LIMITS['layers']} are read")
    for i, entry in enumerate(layers):
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str) \
                or not isinstance(entry.get("config"), dict) \
                or not isinstance(entry.get("config", {}).get("name", entry.get("name")), str):
            raise _fail(path, f"layer {i} of the config is not a {{'class_name', 'config'}} entry with a name")
    return config


# ---------------------------------------------------------------------------------------- HDF5 access
def _child(path, group, name: str):
    """``group[name]`` reached through hard links only (an external or soft link could point anywhere)."""
    h5py = _h5py()
    node = group
    for part in name.split("/"):
        if not part:
            continue
        link = node.get(part, getlink=True)
        if link is None:
            raise _fail(path, f"{node.name}/{part} is missing")
        if not isinstance(link, h5py.HardLink):
            raise _fail(path, f"{node.name}/{part} is a {type(link).__name__}; only hard links are read")
        node = node[part]
    return node


def _read_array(path, dataset) -> np.ndarray:
    h5py = _h5py()
    if not isinstance(dataset, h5py.Dataset):
        raise _fail(path, f"{dataset.name} is not a dataset")
    if dataset.external or dataset.is_virtual:
        raise _fail(path, f"dataset {dataset.name} keeps its data outside the file; refused")
    dtype = dataset.dtype
    if dtype.kind not in "fiub" or dtype.fields is not None:
        raise _fail(path, f"dataset {dataset.name} has dtype {dtype}; expected a numeric array")
    size = int(np.prod(dataset.shape, dtype=np.int64)) * dtype.itemsize if dataset.shape is not None else 0
    if size > LIMITS["array_bytes"]:
        raise _fail(path, f"dataset {dataset.name} holds {size} bytes; at most {LIMITS['array_bytes']} are read")
    return np.array(dataset[()])


def _attr_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _attr_list(path, group, name: str) -> list:
    value = group.attrs.get(name)
    if value is None:
        raise _fail(path, f"{group.name} has no {name!r} attribute")
    if isinstance(value, (bytes, str)):
        value = [value]
    return [_attr_text(v) for v in np.asarray(value).reshape(-1)]


# ---------------------------------------------------------------------------------------- .h5
def _read_h5(path, handle) -> KerasModelFile:
    h5py = _h5py()
    try:
        f = h5py.File(handle, "r")
    except OSError as err:
        raise _fail(path, f"not a readable HDF5 file ({str(err)[:200]})") from None
    with f:
        _check_version(path, _attr_text(f.attrs.get("keras_version", "")))
        raw = f.attrs.get("model_config")
        if raw is None:
            raise _fail(path, "has no 'model_config' attribute: a weights-only file (save the whole model with "
                              "model.save(path))")
        config = _check_model_config(path, _parse_json(path, raw if isinstance(raw, bytes) else str(raw).encode(),
                                                       "the model_config attribute"))
        group = _child(path, f, "model_weights") if "model_weights" in f else f
        weights = {}
        for layer in _attr_list(path, group, "layer_names"):
            layer_group = _child(path, group, layer)
            names = _attr_list(path, layer_group, "weight_names")
            if names:
                weights[layer] = [_read_array(path, _child(path, layer_group, n)) for n in names]
        version = _attr_text(f.attrs.get("keras_version", ""))
    return KerasModelFile(str(path), "h5", config, weights, version)


# ---------------------------------------------------------------------------------------- .keras
def _zip_member(path, archive, name: str) -> bytes:
    info = archive.getinfo(name)
    limit = LIMITS["config_bytes"] if name.endswith(".json") else LIMITS["weights_bytes"]
    if info.file_size > limit:
        raise _fail(path, f"zip member {name} is {info.file_size} bytes; at most {limit} are read")
    if info.compress_size and info.file_size / info.compress_size > LIMITS["compression_ratio"]:
        raise _fail(path, f"zip member {name} expands {info.file_size / info.compress_size:.0f} times; refused "
                          f"(at most {LIMITS['compression_ratio']})")
    with archive.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit or len(data) != info.file_size:
        raise _fail(path, f"zip member {name} does not hold the {info.file_size} bytes its header declares")
    return data


def _check_members(path, archive) -> None:
    infos = archive.infolist()
    if len(infos) > LIMITS["members"]:
        raise _fail(path, f"the zip has {len(infos)} members; at most {LIMITS['members']}")
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise _fail(path, f"zip member name {name!r} points outside the archive; refused")
    missing = [m for m in ("config.json", "model.weights.h5") if m not in archive.namelist()]
    if missing:
        raise _fail(path, f"the .keras zip has no {missing} (members: {archive.namelist()[:10]})")


def _keras_weights(path, f, layers: list) -> dict:
    """{layer name: [arrays]} from a saving_lib weights file, the layer paths derived as saving_lib names them."""
    used: dict = {}
    weights = {}
    for entry in layers:
        class_name = entry["class_name"]
        base = keras_path_name(class_name)
        used[base] = used.get(base, -1) + 1
        stem = f"layers/{base}" if used[base] == 0 else f"layers/{base}_{used[base]}"
        arrays = []
        for sub in _VAR_GROUPS.get(class_name, ["vars"]):
            where = f"{stem}/{sub}"
            if where not in f:
                continue
            group = _child(path, f, where)
            count = len(group.keys())
            if sorted(group.keys()) != sorted(str(i) for i in range(count)):
                raise _fail(path, f"{where} holds {sorted(group.keys())[:10]}; expected variables 0..{count - 1}")
            arrays += [_read_array(path, _child(path, group, str(i))) for i in range(count)]
        if arrays:
            weights[entry["config"].get("name", entry.get("name"))] = arrays
    return weights


def _read_keras_zip(path, handle) -> KerasModelFile:
    h5py = _h5py()
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError) as err:
        raise _fail(path, f"not a readable zip archive ({err})") from None
    with archive:
        _check_members(path, archive)
        try:
            meta = {}
            if "metadata.json" in archive.namelist():
                meta = _parse_json(path, _zip_member(path, archive, "metadata.json"), "metadata.json")
            _check_version(path, _attr_text(meta.get("keras_version", "")))
            config = _check_model_config(path, _parse_json(path, _zip_member(path, archive, "config.json"),
                                                           "config.json"))
            raw = _zip_member(path, archive, "model.weights.h5")
        except (zipfile.BadZipFile, EOFError, OSError) as err:  # a truncated or corrupt member
            raise _fail(path, f"a zip member cannot be read ({type(err).__name__}: {err})") from None
    if not raw.startswith(HDF5_MAGIC):
        raise _fail(path, "model.weights.h5 is not an HDF5 file")
    try:
        f = h5py.File(io.BytesIO(raw), "r")
    except OSError as err:
        raise _fail(path, f"model.weights.h5 is not a readable HDF5 file ({str(err)[:200]})") from None
    with f:
        weights = _keras_weights(path, f, config["config"]["layers"])
    return KerasModelFile(str(path), "keras", config, weights, _attr_text(meta.get("keras_version", "")))


def read_keras(path) -> KerasModelFile:
    """Read a Keras model file (``.h5`` or ``.keras``; the format is decided by the file's magic bytes).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    KerasModelFile

    Raises
    ------
    ValueError
        Not an HDF5 file or a zip, a truncated or corrupt file, a config that is not a Sequential / Functional
        model, a size over :data:`LIMITS`, links or member names that point outside the file.
    FileNotFoundError
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Keras model file {path} does not exist or is not a regular file")
    size = path.stat().st_size
    if size > LIMITS["file_bytes"]:
        raise _fail(path, f"is {size} bytes; at most {LIMITS['file_bytes']} are read")
    with open(path, "rb") as handle:
        magic = handle.read(8)
        handle.seek(0)
        if magic.startswith(HDF5_MAGIC):
            return _read_h5(path, handle)
        if magic.startswith(ZIP_MAGIC):
            return _read_keras_zip(path, handle)
    raise _fail(path, f"starts with {magic!r}: neither an HDF5 (.h5) file nor a zip (.keras) archive")
