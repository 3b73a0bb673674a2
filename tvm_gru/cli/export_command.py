"""``tvm-gru export``: a deployable artifact of a cell, a layer or a Bidirectional wrapper, from a Keras config
(+ weights .npz), an ONNX model, or fresh seeded weights (see :mod:`tvm_gru.deploy.export`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..deploy.export import check_destination, export_bidirectional, export_cell, export_layer
from ..interop.onnx_io import from_onnx, load_model
from ..layers.bidirectional import Bidirectional
from ..layers.cell import GRUCell
from ..layers.gru import GRU
from ..models.model import Model
from ..runtime import artifact
from ..runtime.format import LAYER_FLAGS
from .args import positive_int

__all__ = ["register", "check_files"]


def check_files(args, error) -> None:
    """Name the option whose file is missing or unreadable before anything is compiled."""
    if getattr(args, "config", None) and getattr(args, "onnx", None):
        error("argument --onnx: not allowed with argument --config (the model comes from one of them)")
    if getattr(args, "keras", None) and (getattr(args, "config", None) or getattr(args, "onnx", None)):
        error("argument --keras: not allowed with --config or --onnx (the model comes from one of them)")
    for option in ("config", "weights", "onnx", "keras"):
        value = getattr(args, option, None)
        if value and not Path(value).is_file():
            error(f"argument --{option}: file not found: {value}")
    if getattr(args, "weights", None) and not getattr(args, "config", None):
        error("argument --weights: needs --config (the weights fill the cell the config describes)")
    if getattr(args, "config", None):
        try:
            config = json.loads(Path(args.config).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            error(f"argument --config: {args.config} is not a JSON file ({err})")
        if not isinstance(config, dict):
            error(f"argument --config: expected a JSON object (a Keras GRUCell config), got {type(config).__name__}")
        name = config.get("class_name")
        if name is not None and name not in CONFIG_CLASSES:
            error(f"argument --config: class_name {name!r} cannot be exported; expected one of "
                  f"{list(CONFIG_CLASSES)} (a GRU cell, a GRU layer or a Bidirectional GRU)")
    if getattr(args, "weights", None):
        try:
            with np.load(args.weights, allow_pickle=False) as data:
                if not hasattr(data, "files"):
                    error(f"argument --weights: {args.weights} is a single .npy array, expected a .npz archive")
        except (OSError, ValueError, EOFError) as err:
            error(f"argument --weights: {args.weights} is not a .npz archive ({err})")
    if getattr(args, "out", None) is not None:
        try:
            check_destination(args.out, getattr(args, "overwrite", False), "argument --out:", "--overwrite")
        except (ValueError, FileExistsError) as err:
            error(str(err))
    batches = getattr(args, "batches", None)
    if batches:
        try:
            args.batches = ",".join(str(positive_int(b.strip())) for b in batches.split(","))
        except argparse.ArgumentTypeError:
            error(f"argument --batches: expected comma-separated positive integers, got {batches!r}")



# The Keras class names a --config may have: cells, layers (an RNN wraps a GRUCell) and the Bidirectional wrapper.
_CELL_CLASSES, _LAYER_CLASSES, _WRAPPER_CLASSES = ("GRUCell",), ("GRU", "GRUV1", "RNN"), ("Bidirectional",)
CONFIG_CLASSES = _CELL_CLASSES + _LAYER_CLASSES + _WRAPPER_CLASSES


def _keras_weights(path, prefixes=("",)) -> list:
    """``[kernel, recurrent_kernel(, bias)]`` per prefix (``forward_kernel``, ... for a Bidirectional) from a .npz
    with those names, else its arrays in order."""
    with np.load(path, allow_pickle=False) as data:
        keys = [p + k for p in prefixes for k in ("kernel", "recurrent_kernel", "bias") if p + k in data.files]
        return [data[k] for k in keys or data.files]


def _read_config(args) -> dict:
    return json.loads(Path(args.config).read_text())


def _cell_from_files(args):
    if args.onnx:
        loaded = from_onnx(args.onnx)
        loaded = loaded[0] if isinstance(loaded, tuple) else loaded
        return getattr(loaded, "cell", loaded)  # a GRU layer holds its cell
    if args.config:
        config = json.loads(Path(args.config).read_text())
        config = config.get("config", config)  # a Keras layer dict {"class_name": ..., "config": {...}}
        cell = GRUCell.from_config(config)
        if args.weights:
            cell.set_weights(_keras_weights(args.weights))
        elif args.input_dim:
            cell.build((1, args.input_dim))
        return cell
    cell = GRUCell(args.units, reset_after=args.reset_after, implementation=args.implementation,
                   dtype=args.dtype, seed=args.seed)
    cell.build((1, args.input_dim))
    return cell


def _is_bidirectional_request(args) -> bool:
    """A --config holding a Keras Bidirectional wrapper (class_name "Bidirectional", or a flat config with the
    wrapped ``layer`` and a ``merge_mode``)."""
    if not args.config:
        return False
    config = _read_config(args)
    if "class_name" in config:
        return config["class_name"] in _WRAPPER_CLASSES
    return "layer" in config and "merge_mode" in config


def _is_layer_request(args) -> bool:
    """--layer, or a --config holding a Keras GRU layer (class_name "GRU", or a flat config with layer flags)."""
    if args.layer:
        return True
    if args.config:
        config = _read_config(args)
        if "class_name" in config:
            return config["class_name"] in _LAYER_CLASSES
        return "return_sequences" in config
    return False


def _layer_flags(args) -> dict:
    return {flag: True for flag in LAYER_FLAGS if getattr(args, flag, False)}


def _layer_from_files(args):
    flags = _layer_flags(args)
    if args.onnx:
        loaded = from_onnx(args.onnx)
        layer = loaded[0] if isinstance(loaded, tuple) else loaded
        for flag, value in flags.items():
            setattr(layer, flag, value)
        return layer
    if args.config:
        config = json.loads(Path(args.config).read_text())
        config = {**config.get("config", config), **flags}
        layer = GRU.from_config(config)
        if args.weights:
            layer.set_weights(_keras_weights(args.weights))
        elif args.input_dim:
            layer.build((1, 1, args.input_dim))
        return layer
    layer = GRU(args.units, reset_after=args.reset_after, implementation=args.implementation, dtype=args.dtype,
                seed=args.seed, **flags)
    layer.build((1, 1, args.input_dim))
    return layer


def _with_flags(entry, flags: dict):
    """A wrapped layer's config entry (``{"class_name", "config"}`` or flat) with the command line's layer flags."""
    if not flags or not isinstance(entry, dict):
        return entry
    if isinstance(entry.get("config"), dict):
        return {**entry, "config": {**entry["config"], **flags}}
    return {**entry, **flags}


def _bidirectional_from_files(args):
    """The Bidirectional wrapper of --config (the ``{"class_name", "config"}`` form or flat), the layer flags set
    on its layers (``go_backwards`` on the forward one only), its weights from --weights (``forward_kernel``, ...,
    ``backward_bias``, else six or four arrays in order)."""
    config = _read_config(args)
    config = config["config"] if "class_name" in config else config
    if not isinstance(config, dict):
        raise TypeError(f"--config: the Bidirectional entry 'config' must be a JSON object; received "
                        f"{type(config).__name__}")
    flags = _layer_flags(args)
    config = {**config, "layer": _with_flags(config.get("layer"), flags)}
    if config.get("backward_layer") is not None:
        config["backward_layer"] = _with_flags(config["backward_layer"],
                                               {k: v for k, v in flags.items() if k != "go_backwards"})
    wrapper = Bidirectional.from_config(config)
    if args.weights:
        wrapper.set_weights(_keras_weights(args.weights, ("forward_", "backward_")))
    elif args.input_dim:
        wrapper.build((1, 1, args.input_dim))
    return wrapper


def _target_arg(args):
    options = {k: v for k, v in (("mcpu", args.mcpu), ("arch", args.arch)) if v}
    name = args.target or "host"
    return {"name": name, **options} if options else name


# Ops that only feed a GRU node's constant inputs: a graph of these and one GRU node is a layer, anything more a model.
_GRU_ONLY_OPS = {"GRU", "Constant", "Identity", "Cast"}


def _is_model_request(args) -> bool:
    """--model, or an --onnx graph that is more than one GRU node (other ops, or several GRU nodes)."""
    if args.model:
        return True
    if not args.onnx:
        return False
    ops = [node.op_type for node in load_model(args.onnx)[0].graph.node]
    return ops.count("GRU") != 1 or any(op not in _GRU_ONLY_OPS for op in ops)


def _cli(args) -> int:
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [args.batch]
    if getattr(args, "keras", None):
        model = Model.from_keras(args.keras, target=_target_arg(args), batch=batches, weight_dtype=args.weight_dtype)
        out = model.export(args.out, overwrite=args.overwrite)
    elif _is_model_request(args):
        if not args.onnx:
            raise ValueError("--model needs --onnx: a whole model is read from an ONNX file")
        model = Model.from_onnx(args.onnx, target=_target_arg(args), batch=batches, weight_dtype=args.weight_dtype)
        out = model.export(args.out, overwrite=args.overwrite)
    elif _is_bidirectional_request(args):
        out = export_bidirectional(_bidirectional_from_files(args), args.out, target=_target_arg(args),
                                   batch=batches, masking=not args.no_masking, overwrite=args.overwrite,
                                   weight_dtype=args.weight_dtype)
    elif _is_layer_request(args):
        out = export_layer(_layer_from_files(args), args.out, target=_target_arg(args), batch=batches,
                           masking=not args.no_masking, overwrite=args.overwrite, weight_dtype=args.weight_dtype)
    else:
        out = export_cell(_cell_from_files(args), args.out, target=_target_arg(args), batch=batches,
                          overwrite=args.overwrite, weight_dtype=args.weight_dtype)
    meta = json.loads((out / artifact.METADATA).read_text())
    total = sum((out / f).stat().st_size for f in meta["files"])
    print(f"wrote {out} ({artifact.artifact_kind(meta)}, {meta['target']['family']}, batch {meta.get('batch_sizes')}, "
          f"{total / 1e6:.2f} MB)")
    for rel in meta["files"]:
        print(f"  {rel:40s} {(out / rel).stat().st_size / 1e3:10.1f} kB")
    return 0


def register(subparsers, add_shape_args) -> None:
    """``tvm-gru export``: a cell, a layer or a Bidirectional wrapper, from a Keras config (+ weights .npz), an
    ONNX model, or fresh seeded weights."""
    p = subparsers.add_parser("export", help="write a deployable artifact (kernel + weights + runtime libs)")
    add_shape_args(p)
    p.add_argument("--config", help="Keras GRUCell, GRU or Bidirectional config JSON (get_config() output, or a "
                                    "{'class_name': ..., 'config': ...} dict; class_name 'GRU' exports a layer, "
                                    "'Bidirectional' a bidirectional artifact)")
    p.add_argument("--weights", help=".npz with kernel, recurrent_kernel[, bias] (or arr_0, arr_1[, arr_2]); for a "
                                     "Bidirectional forward_kernel, ..., backward_bias (or the arrays in order)")
    p.add_argument("--onnx", help="an ONNX file: one GRU node gives a cell or layer artifact, a whole model (other "
                                  "ops, several GRU nodes) a model artifact (instead of --config/--weights)")
    p.add_argument("--keras", help="a saved Keras model (.h5 or .keras, tf_keras 2.x): a model artifact of the whole "
                                   "model (no TensorFlow needed)")
    p.add_argument("--model", action="store_true", help="export the --onnx graph as a whole model (kind 'model')")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--mcpu", help="CPU for x86/aarch64 targets, e.g. cortex-a72, znver3")
    p.add_argument("--arch", help="GPU architecture for cuda, e.g. sm_80")
    p.add_argument("--seed", type=int, default=0, help="weights seed when no --config/--onnx is given")
    p.add_argument("--batches", help="comma-separated batch sizes to compile (default: --batch)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--weight-dtype", choices=["float32", "float16", "int8"], default=None,
                   help="storage dtype of the GRU weight matrices of the cell, layer, both Bidirectional directions or "
                        "every GRU of a model (float16: half the bytes; int8: a quarter, symmetric per-column scales; "
                        "float32 math either way; default: the config's weight_dtype, else the dtype)")
    layer = p.add_argument_group("layer", "export a GRU layer (whole-sequence kernels) instead of a cell")
    layer.add_argument("--layer", action="store_true", help="export a GRU layer (implied by a GRU --config)")
    for flag in LAYER_FLAGS:
        layer.add_argument("--" + flag.replace("_", "-"), dest=flag, action="store_true",
                           help=f"layer option {flag}=True")
    layer.add_argument("--no-masking", action="store_true", help="skip the masked kernels (no `mask` argument)")
    p.set_defaults(func=_cli)
