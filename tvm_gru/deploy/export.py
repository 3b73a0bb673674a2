"""Deployable artifacts: a GRU cell or GRU layer compiled for a target, in one folder that runs without the
TVM compiler.

>>> cell = tvm_gru.GRUCell(256); cell.build((1, 128))                      # doctest: +SKIP
>>> export_cell(cell, "gru_arm", target={"name": "aarch64", "mcpu": "cortex-a72"})  # doctest: +SKIP
>>> layer = tvm_gru.GRU(256, return_sequences=True); layer.build((1, None, 128))     # doctest: +SKIP
>>> export_layer(layer, "gru_layer_arm", target="aarch64", batch=[1, 8])   # doctest: +SKIP

then, on the board (``pip install apache-tvm-ffi numpy``)::

    import sys; sys.path.insert(0, "gru_arm/python/tvm_gru_runtime.zip")   # the bundled loader (no bytecode)
    import tvm_gru_runtime
    cell = tvm_gru_runtime.load("gru_arm")
    out, [h] = cell(x, [h])
    layer = tvm_gru_runtime.load("gru_layer_arm")   # a DeployedGRU: layer(inputs, mask=..., initial_state=...)
    seq = layer(x_btI)

The folder layout and the loader are in :mod:`tvm_gru.runtime.artifact`. What goes in ``lib/``:

* CPU kernels that call into the TVM runtime (parallel loops, workspaces) get ``libtvm_runtime.so`` for the
  target's architecture: this machine's copy from the apache-tvm wheel, or, for aarch64 on an x86 host, the
  one in the apache-tvm aarch64 wheel (downloaded once with pip into ``$TVM_GRU_RUNTIME_LIBS``).
* CUDA kernels get ``libtvm_runtime.so`` + ``libtvm_runtime_cuda.so`` (the module loader for the embedded
  fatbin/cubin) and ``libcudart`` when found; the driver (``libcuda.so.1``) is the device's own.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import zipfile
from datetime import datetime, timezone
from importlib import metadata as md
from pathlib import Path

import numpy as np
import tvm

from .. import schedules, targets
from .._version import __version__
from ..build.sequence import chosen_schedule, compile_sequence_module, scheduled_sequence, sequence_rule
from ..build.step import scheduled_module
from ..ops.config import StepSpec
from ..ops.sequence import SequenceSpec, pack_sequence_weights
from ..runtime import artifact
from ..runtime.format import LAYER_FLAGS, file_sha256
from ..runtime.packing import check_storable, pack_weights
from .destination import check_destination, publish
from .toolchains import cuda_compile_env, export_library, runtime_libs

__all__ = ["export_cell", "export_layer", "export_bidirectional", "write_artifact", "batch_list",
           "copy_runtime_package", "plain", "target_meta", "versions"]

log = logging.getLogger(__name__)

# CPU features an x86 artifact records for the loader to check (the ISA its kernels were compiled to use).
_X86_FEATURES = {"haswell": ["avx2", "fma"], "skylake-avx512": ["avx2", "fma", "avx512f"]}

# ---------------------------------------------------------------------------------------- compile
def _kernel_specs(cell, batches, lanes, weight_dtype=None):

    return {b: StepSpec(cell.config, batch=b, input_dim=cell.input_dim, lanes=lanes, weight_dtype=weight_dtype)
            for b in batches}


def compile_kernels(specs: dict, target):
    """Compile one step function per batch size into one module: ``step_b{B}``. Returns (executable, names)."""


    funcs = {}
    for batch, spec in specs.items():
        name = f"step_b{batch}"
        funcs[name] = scheduled_module(spec, target)["main"].with_attr("global_symbol", name)
    mod = tvm.IRModule(funcs)
    if target.kind.name == "cuda":

        with cuda_compile_env(), target:
            return tvm.compile(mod, target=target), list(funcs)
    with target:
        return tvm.compile(mod, target=target), list(funcs)


def plain(obj):
    """TVM FFI containers (Map, Array, String) -> JSON-ready dict/list/str."""
    if isinstance(obj, (bool, int, float)) or obj is None:
        return obj
    if isinstance(obj, str):
        return str(obj)
    if hasattr(obj, "items"):
        return {str(k): plain(v) for k, v in obj.items()}
    if hasattr(obj, "__iter__"):
        return [plain(v) for v in obj]
    return str(obj)


def target_meta(target, family: str, weight_dtype: str = "float32") -> dict:
    attrs = target.attrs
    meta = {"family": family, "tvm": plain(target.export()),
            "host_arch": "aarch64" if family == "aarch64" else "x86_64", "cpu_features": []}
    if family == "aarch64":
        mattr = [str(a) for a in attrs["mattr"]] if "mattr" in attrs else []
        meta["cpu_features"] = ["asimd"] + (["asimddp"] if "+dotprod" in mattr else [])
    elif family == "x86":
        mcpu = str(attrs["mcpu"]) if "mcpu" in attrs else ""
        meta["cpu_features"] = list(_X86_FEATURES["skylake-avx512"] if mcpu in targets.AVX512_MCPUS
                                    else _X86_FEATURES["haswell"] if mcpu else [])
        if mcpu and weight_dtype == "float16":  # vcvtph2ps widens the half weights (every AVX2 CPU has it)
            meta["cpu_features"].append("f16c")
    else:
        meta["arch"] = str(attrs["arch"]) if "arch" in attrs else None
    return meta


def versions() -> dict:

    out = {"tvm_gru": __version__, "numpy": np.__version__, "python": platform.python_version()}
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


_RUNTIME_INIT = ('"""tvm_gru deployed cell/layer runtime (numpy + apache-tvm-ffi only). See artifact.py."""\n'
                 "from .artifact import ArtifactError, DeployedCell, load, verify\n"
                 "from .deployed_bidirectional import DeployedBidirectional\n"
                 "from .deployed_layer import DeployedGRU\n"
                 "from .deployed_model import DeployedModel\n\n"
                 '__all__ = ["load", "verify", "DeployedCell", "DeployedGRU", "DeployedBidirectional", "DeployedModel",'
                 ' "ArtifactError"]\n')


def copy_runtime_package(dest: Path) -> list:
    """The runtime loader as a standalone package in one zip, ``python/tvm_gru_runtime.zip`` (numpy + tvm_ffi
    only), imported with ``sys.path.insert(0, "<artifact>/python/tvm_gru_runtime.zip")``.

    A zip rather than a folder of sources: Python imports it from the zip alone, so no ``__pycache__`` is read
    or written in the artifact, and no file planted next to it (a .pyc, an extension module) is imported. Sources
    only, with fixed timestamps, so the same runtime gives the same bytes.
    """

    src = Path(artifact.__file__).parent
    path = dest / "python" / "tvm_gru_runtime.zip"
    path.parent.mkdir(parents=True)
    sources = {"__init__.py": _RUNTIME_INIT.encode(),
               **{f.name: f.read_bytes() for f in sorted(src.glob("*.py")) if f.name != "__init__.py"}}
    with zipfile.ZipFile(path, "x", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in sources.items():
            info = zipfile.ZipInfo(f"tvm_gru_runtime/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return [path]


def batch_list(batch) -> list:
    batches = sorted({int(batch)} if np.isscalar(batch) else {int(b) for b in batch})
    if not batches or batches[0] < 1:
        raise ValueError(f"`batch` must be a positive int or a non-empty sequence of them; received {batch!r}")
    return batches


def write_artifact(dest: Path, executable, family: str, meta: dict, overwrite: bool, packed: dict | None = None,
                   runtime=runtime_libs) -> Path:
    """Write the kernel library (``meta["kernel"]["library"]``), ``weights.npz`` (``packed``, when given), lib/,
    python/ and the metadata (``meta`` + files, hashes) into a temporary folder next to ``dest``, then move it into
    place (:func:`publish`: a reader never sees a half-written artifact, and only an artifact or an empty folder is
    ever replaced). ``runtime(family, library)`` lists the TVM runtime libraries to bundle, as
    :func:`~.toolchains.runtime_libs` does."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        files = [tmp / meta["kernel"]["library"]]
        export_library(executable, files[0], family)
        if packed is not None:
            files.append(tmp / "weights.npz")
            np.savez(files[1], **packed)
            meta = {**meta, "weights": "weights.npz"}
        libs = []
        (tmp / "lib").mkdir()
        for src, provides in runtime(family, files[0]):
            dst = tmp / "lib" / Path(src).name
            shutil.copyfile(src, dst)
            files.append(dst)
            libs.append({"path": f"lib/{dst.name}", "provides": provides})
        files += copy_runtime_package(tmp)
        meta = {**meta, "runtime_libs": libs, "versions": versions(),
                "files": {f.relative_to(tmp).as_posix(): file_sha256(f) for f in files}}
        (tmp / artifact.METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, dest, overwrite)
    return dest


def export_cell(cell, path, target=None, batch=1, overwrite: bool = False, weight_dtype=None) -> Path:
    """Write a deployable artifact of a built cell for ``target``.

    Parameters
    ----------
    cell : tvm_gru.GRUCell
        A built cell (its weights are exported; dropout does not apply to deployed cells).
    path : str or Path
        The artifact folder to create.
    target : None, str, dict or tvm.target.Target
        As for :func:`tvm_gru.targets.resolve`: "host" (default), "x86", "aarch64"/"arm", "cuda", or a dict
        such as ``{"name": "aarch64", "mcpu": "cortex-a72"}`` / ``{"name": "cuda", "arch": "sm_90"}``.
    batch : int or sequence of int
        Batch sizes to compile a kernel for (kernels are specialised on the batch size).
    overwrite : bool
        Replace an existing folder at ``path``.
    weight_dtype : None, "float32", "float16" or "int8"
        Storage dtype of the packed kernel and recurrent kernel in the artifact (None: the cell's
        ``weight_dtype``, float32 by default). "float16" (float32 cells only): half the weight bytes, each
        weight rounded to the nearest half and widened to float32 before its multiply-add; inputs, states, bias,
        accumulation and gate math stay float32. "int8" (float32 cells, CPU targets): a quarter of the weight
        bytes, quantized symmetrically per Keras column (``weight_scale`` (2, 3, Hp) float32 beside the bias),
        widened to float32 in the product's inner loop; the error it adds is bounded in the README (int8 weights).

    Returns
    -------
    Path
        The artifact folder. Load it with :func:`tvm_gru.load` (or the bundled ``python/tvm_gru_runtime.zip``).
    """
    if not getattr(cell, "built", False):
        raise ValueError("`export_cell` needs a built cell: call build(input_shape), set_weights or the cell first")

    batches = batch_list(batch)
    wdt = cell.storage_dtype(weight_dtype)
    dest = check_destination(path, overwrite)
    target = targets.resolve(target)
    family = targets.family(target)
    lanes = targets.lanes(target, cell.config.dtype)
    specs = _kernel_specs(cell, batches, lanes, wdt)
    executable, names = compile_kernels(specs, target)


    weights = cell.get_weights()
    packed = pack_weights(cell.config, weights[0], weights[1], weights[2] if cell.config.use_bias else None, lanes,
                          wdt)
    meta = {
        "format": artifact.FORMAT, "format_version": artifact.KIND_VERSIONS["cell"], "kind": "cell",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cell.config.to_dict(), "input_dim": cell.input_dim, "units": cell.config.units,
        "dtype": cell.config.dtype, "weight_dtype": wdt, "batch_sizes": batches, "lanes": lanes,
        "shapes": {"inputs": ["batch", cell.input_dim], "states": ["batch", cell.config.units],
                   **{n: list(a.shape) for n, a in packed.items()}},
        "target": target_meta(target, family, wdt),
        "kernel": {"library": "kernel.so", "functions": {str(b): n for b, n in zip(batches, names)},
                   "weights": list(packed), "args": ["x", "h", *packed, "h_new"]},
    }
    return write_artifact(dest, executable, family, meta, overwrite, packed)


# ---------------------------------------------------------------------------------------- layers


def compile_sequence_kernels(layer, batches, target, lanes: int, masking: bool, weight_dtype=None):
    """Compile the layer's whole-sequence kernels for every batch size into one module (see
    :func:`sequence_functions`). Returns ``(executable, table)``."""
    funcs, table = sequence_functions(layer, batches, target, lanes, masking, weight_dtype=weight_dtype)
    return compile_sequence_module(tvm.IRModule(funcs), target), table  # the in-process compile's passes


def sequence_functions(layer, batches, target, lanes: int, masking: bool, prefix: str = "", weight_dtype=None):
    """The scheduled whole-sequence functions of ``layer`` for every batch size, not yet compiled.

    Per batch B: ``seq_b{B}`` (the rule's default schedule), ``seq_b{B}_masked`` (with ``masking``), and, when
    the rule has a serial schedule for short calls (streaming), ``seq_b{B}_short`` / ``seq_b{B}_short_masked``.
    A streaming layer (stateful, last output only) also gets ``frame_b{B}``, the step kernel, where the rule runs
    single frames on it (``CPUSequenceRule.frames_on_step_kernel``).
    Every name starts with ``prefix`` (two layers' functions in one module). ``weight_dtype``: the storage dtype
    of the weight matrices the kernels take (None: the layer's own, see :meth:`tvm_gru.GRUCell.storage_dtype`).
    Returns ``({name: PrimFunc}, {str(B): {"full": name, "masked": name, "short": name, "short_steps": n, ...}})``.
    """


    rule = sequence_rule(target)
    wdt = layer.cell.storage_dtype(weight_dtype)
    funcs, table = {}, {}
    for batch in batches:
        entry = table[str(batch)] = {}
        for masked in (False, True) if masking else (False,):
            spec = SequenceSpec(layer.cell.config, batch=batch, input_dim=layer.input_dim, lanes=lanes,
                                time_major=layer.time_major, masked=masked,
                                zero_output_for_mask=layer.zero_output_for_mask,
                                return_sequences=layer.return_sequences, weight_dtype=wdt)
            variants = [("full", chosen_schedule(spec, target))]
            short = rule.short_schedule(spec, target)
            if short is not None:
                variants.append(("short", short[1]))
                entry["short_steps"] = int(short[0])
            for kind, schedule in variants:
                key = kind if not masked else ("masked" if kind == "full" else "short_masked")
                name = f"{prefix}seq_b{batch}" + ("" if kind == "full" else "_short") + ("_masked" if masked else "")
                func = scheduled_sequence(spec, target, schedule)["main"]
                funcs[name] = func.with_attr("global_symbol", name)
                entry[key] = name
            streams = layer.stateful and not layer.return_sequences and not layer.return_state  # DeployedGRU's frames
            if not masked and streams and rule.frames_on_step_kernel(spec, target):
                step = StepSpec(layer.cell.config, batch=batch, input_dim=layer.input_dim, lanes=lanes,
                                weight_dtype=wdt)
                name = entry["frame"] = f"{prefix}frame_b{batch}"
                funcs[name] = scheduled_module(step, target)["main"].with_attr("global_symbol", name)
    return funcs, table


def export_layer(layer, path, target=None, batch=1, masking: bool = True, overwrite: bool = False,
                 weight_dtype=None) -> Path:
    """Write a deployable artifact of a built :class:`tvm_gru.GRU` layer for ``target``.

    The artifact holds the fused whole-sequence kernels (symbolic sequence length: any T runs without
    recompiling) for each batch size, the packed weights and the layer's options (return_sequences,
    return_state, go_backwards, stateful, time_major, zero_output_for_mask). :func:`tvm_gru.load` returns a
    :class:`~tvm_gru.runtime.deployed_layer.DeployedGRU`, called like the Keras layer.

    Parameters
    ----------
    layer : tvm_gru.GRU
        A built layer (its weights are exported; dropout does not apply to deployed layers).
    path : str or Path
        The artifact folder to create.
    target : None, str, dict or tvm.target.Target
        "host" (default), "x86", "aarch64"/"arm" (cross-compiled), or a dict such as
        ``{"name": "aarch64", "mcpu": "cortex-a72"}``. CUDA is refused: the sequence kernel has CPU schedules only.
    batch : int or sequence of int
        Batch sizes to compile kernels for (kernels are specialised on the batch size, not on the length).
    masking : bool
        Also compile the masked kernels, so the deployed layer takes ``mask=`` (default). False halves the
        kernel count; a ``mask`` passed to such a layer then raises.
    overwrite : bool
        Replace an existing folder at ``path``.
    weight_dtype : None, "float32", "float16" or "int8"
        Storage dtype of the packed kernel and recurrent kernel in the artifact (None: the layer's
        ``weight_dtype``, float32 by default), as for :func:`export_cell`: "int8" adds the column scales
        ``weight_scale`` (2, 3, Hp) float32 after the bias. The metadata's ``weight_dtype`` (and its Keras config)
        say which.

    Returns
    -------
    Path
        The artifact folder.
    """
    if not getattr(layer, "built", False):
        raise ValueError("`export_layer` needs a built layer: call build(input_shape), set_weights or the layer "
                         "first")
    batches = batch_list(batch)
    wdt = layer.cell.storage_dtype(weight_dtype)
    _check_storable(layer, wdt)
    dest = check_destination(path, overwrite)
    target, family = _sequence_target(target, "a GRU layer")
    lanes = targets.lanes(target, layer.cell.config.dtype)
    executable, table = compile_sequence_kernels(layer, batches, target, lanes, bool(masking), wdt)
    packed = layer_weights(layer, lanes, wdt)
    entries = layer_entries(layer, lanes, masking, table, packed, wdt)
    meta = {
        "format": artifact.FORMAT, "format_version": artifact.KIND_VERSIONS["layer"], "kind": "layer",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "batch_sizes": batches,
        **entries, "target": target_meta(target, family, wdt),
        "kernel": {"library": "kernel.so", **entries["kernel"]},
    }
    return write_artifact(dest, executable, family, meta, overwrite, packed)


def _sequence_target(target, what: str):
    """``(target, family)`` resolved, for the whole-sequence kernels: CPU targets with a sequence rule only."""
    target = targets.resolve(target)
    family = targets.family(target)
    if family == "cuda" or schedules.sequence_rule(target) is None:
        raise ValueError(f"cannot export {what} for target {family!r} ({target.kind.name}): the "
                         "whole-sequence kernel has CPU schedules only (x86, aarch64; see tvm_gru.schedules) and "
                         "the deployed layer runs on CPUs. Export the cell for this target instead "
                         "(layer.cell.export(path, target=...)) and run the time loop around it, or export the "
                         "layer for 'host', 'x86' or 'aarch64'")
    return target, family


def layer_weights(layer, lanes: int, weight_dtype=None) -> dict:
    """The layer's weights packed for its sequence kernel, by kernel parameter name, the matrices stored as
    ``weight_dtype`` (None: the layer's own)."""
    cell = layer.cell
    config = cell.config
    return pack_sequence_weights(config, cell.kernel, cell.recurrent_kernel, cell.bias if config.use_bias else None,
                                 lanes, cell.storage_dtype(weight_dtype))


def _check_storable(layer, weight_dtype: str) -> None:
    """Refuse a layer's weights that ``weight_dtype`` cannot hold (ValueError naming the matrix) before anything
    is compiled or written (packing would refuse them too, after minutes of compiling)."""
    check_storable(weight_dtype, {"kernel": layer.cell.kernel, "recurrent_kernel": layer.cell.recurrent_kernel})


def layer_entries(layer, lanes: int, masking: bool, table: dict, packed: dict, weight_dtype: str) -> dict:
    """The metadata entries of one exported layer: config, storage dtype of the weight matrices, shapes, layer
    flags, Keras config (with ``weight_dtype`` as exported) and its kernel functions (``table``) and weights
    (``packed``); a layer artifact's top level, or one direction of a bidirectional artifact."""
    config = layer.cell.config
    steps_first = layer.time_major
    keras_config = {k: v for k, v in layer.get_config().items() if k != "weight_dtype"}
    if weight_dtype != config.dtype:  # as GRU.get_config lists it: only when it is not the default
        keras_config["weight_dtype"] = weight_dtype
    return {
        "config": config.to_dict(), "input_dim": layer.input_dim, "units": config.units, "dtype": config.dtype,
        "weight_dtype": weight_dtype, "lanes": lanes,
        "layer": {"name": layer.name, **{flag: bool(getattr(layer, flag)) for flag in LAYER_FLAGS},
                  "masking": bool(masking)},
        "keras_config": keras_config,
        "shapes": {"inputs": ["time", "batch", layer.input_dim] if steps_first else ["batch", "time", layer.input_dim],
                   "mask": ["time", "batch"] if steps_first else ["batch", "time"],
                   "states": ["batch", config.units], **{n: list(a.shape) for n, a in packed.items()}},
        "kernel": {"functions": table, "weights": list(packed),
                   "args": ["x", "h0", "[mask]", *packed, "[sequence]", "last", "state", "reverse"],
                   # the "frame" functions (single streamed frames): the step kernel, R_h block-major (NB, H, 1, V),
                   # rebuilt from candidate_packed at load time
                   "frame_args": ["x (B, I)", "h (B, H)", *packed, "h_new (B, H)"]},
    }


def _kernel_key(layer, lanes: int, weight_dtype: str) -> tuple:
    """What a layer's sequence kernels depend on (the direction is a kernel argument, not part of it)."""
    return (tuple(sorted(layer.cell.config.to_dict().items())), layer.input_dim, lanes, weight_dtype,
            *(bool(getattr(layer, flag)) for flag in LAYER_FLAGS if flag != "go_backwards"))


def export_bidirectional(wrapper, path, target=None, batch=1, masking: bool = True, overwrite: bool = False,
                         weight_dtype=None) -> Path:
    """Write a deployable artifact of a built :class:`tvm_gru.Bidirectional` for ``target``.

    One folder, one kernel library: both directions' whole-sequence kernels (a single set when both directions
    have the same config and options: the direction is a kernel argument), one ``weights.npz`` (members
    ``forward.<name>`` and ``backward.<name>``), the merge mode and each direction's layer options.
    :func:`tvm_gru.load` returns a :class:`~tvm_gru.runtime.deployed_bidirectional.DeployedBidirectional`, called
    like the Keras wrapper, whose outputs equal the in-process wrapper's.

    Parameters
    ----------
    wrapper : tvm_gru.Bidirectional
        A built wrapper (both directions' weights are exported; dropout does not apply to deployed layers).
    path : str or Path
        The artifact folder to create.
    target : None, str, dict or tvm.target.Target
        "host" (default), "x86", "aarch64"/"arm" (cross-compiled), or a dict such as
        ``{"name": "aarch64", "mcpu": "cortex-a72"}``. CUDA is refused (CPU schedules only).
    batch : int or sequence of int
        Batch sizes to compile kernels for (any sequence length runs on them).
    masking : bool
        Also compile the masked kernels, so the deployed wrapper takes ``mask=`` (default).
    overwrite : bool
        Replace an existing folder at ``path``.
    weight_dtype : None, "float32", "float16" or "int8"
        Storage dtype of both directions' weight matrices (None: each direction's own ``weight_dtype``), as for
        :func:`export_layer`.

    Returns
    -------
    Path
        The artifact folder.
    """
    directions = (getattr(wrapper, "forward_layer", None), getattr(wrapper, "backward_layer", None))
    if not all(hasattr(d, "cell") for d in directions):
        raise TypeError(f"`wrapper` must be a tvm_gru.Bidirectional; received {type(wrapper).__name__}")
    if not wrapper.built:
        raise ValueError("`export_bidirectional` needs a built wrapper: call build(input_shape), set_weights or the "
                         "wrapper first")
    batches = batch_list(batch)
    dtypes = [layer.cell.storage_dtype(weight_dtype) for layer in directions]
    for layer, wdt in zip(directions, dtypes):
        _check_storable(layer, wdt)
    dest = check_destination(path, overwrite)
    target, family = _sequence_target(target, "a Bidirectional GRU")
    funcs, tables, parts, packed = {}, [], {}, {}
    for side, layer, wdt in zip(("forward", "backward"), directions, dtypes):
        lanes = targets.lanes(target, layer.cell.config.dtype)
        if tables and _kernel_key(layer, lanes, wdt) == tables[0][0]:
            table = tables[0][1]  # the same kernels, run with reverse=1
        else:
            own, table = sequence_functions(layer, batches, target, lanes, bool(masking),
                                            prefix="" if not tables else f"{side}_", weight_dtype=wdt)
            funcs.update(own)
        tables.append((_kernel_key(layer, lanes, wdt), table))
        weights = layer_weights(layer, lanes, wdt)
        parts[side] = layer_entries(layer, lanes, masking, table, weights, wdt)
        packed.update({f"{side}.{name}": array for name, array in weights.items()})
    executable = compile_sequence_module(tvm.IRModule(funcs), target)
    feature_dtype = "float16" if "float16" in dtypes else dtypes[0]  # the CPU features the kernels need (f16c)
    meta = {
        "format": artifact.FORMAT, "format_version": artifact.KIND_VERSIONS["bidirectional"], "kind": "bidirectional",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "batch_sizes": batches,
        "target": target_meta(target, family, feature_dtype), "kernel": {"library": "kernel.so"},
        "bidirectional": {"name": wrapper.name, "merge_mode": wrapper.merge_mode},
        "keras_config": wrapper.get_config(), **parts,
    }
    return write_artifact(dest, executable, family, meta, overwrite, packed)


# ---------------------------------------------------------------------------------------- CLI
