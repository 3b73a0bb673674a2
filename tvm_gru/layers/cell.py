"""``GRUCell``: the Keras v1 GRU cell, computed by a TVM-compiled kernel.

Mirrors ``tf.compat.v1.keras.layers.GRUCell`` (tf_keras ``gru_v1.GRUCell``): the constructor validates and
creates no weights, ``build`` creates them, ``cell(inputs, states, training=None)`` returns
``(output, [new_state])`` (or ``(output, new_state)`` for a bare state), ``get_config`` is flat and
Keras-compatible.
"""

from __future__ import annotations

import json
import numbers
import os

import numpy as np

from .. import targets
from ..keras_objects import constraints, initializers, regularizers
from ..ops.config import GRUConfig, StepSpec, check_positive_int, check_weight_dtype
from ..runtime.layer_calls import check_training
from ..runtime.packing import check_storable, pack_weights
from . import hooks
from .inputs import as_array, check_index_range, check_step_args, kernel_view

__all__ = ["GRUCell"]

_SERIAL = {"kernel_initializer": initializers, "recurrent_initializer": initializers,
           "bias_initializer": initializers, "kernel_regularizer": regularizers,
           "recurrent_regularizer": regularizers, "bias_regularizer": regularizers,
           "kernel_constraint": constraints, "recurrent_constraint": constraints, "bias_constraint": constraints}
_COUNTER = [0]


def constructor_kwargs(cls, config: dict, target=None) -> dict:
    """Keyword arguments of ``cls.__init__`` from a Keras config dict (``trainable`` dropped, unknown keys refused)."""
    cfg = dict(config)
    cfg.pop("trainable", None)
    if "units" not in cfg:
        raise ValueError("`config` has no 'units' entry")
    code = cls.__init__.__code__
    known = set(code.co_varnames[1:code.co_argcount])
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"`config` has unsupported keys {unknown}; expected a subset of {sorted(known)}")
    if target is not None:
        cfg["target"] = target
    return cfg


def unwrap_config(config, owner: str, accepted: tuple) -> tuple:
    """``(class name or None, flat config)`` of a Keras config: a flat dict, or the serialised
    ``{"class_name", "config"}`` form, whose class must be one of ``accepted`` (ValueError naming ``owner`` and the
    class received otherwise)."""
    if not isinstance(config, dict):
        raise TypeError(f"`config` must be a dict, received {type(config).__name__}")
    if "class_name" not in config:
        return None, config
    class_name = config["class_name"]
    if class_name not in accepted:
        raise ValueError(f"{owner}.from_config received a config of class {class_name!r}; expected one of "
                         f"{list(accepted)}")
    inner = config.get("config")
    if not isinstance(inner, dict):
        raise ValueError(f"{owner}.from_config: the {class_name} config's 'config' entry must be a dict; received "
                         f"{type(inner).__name__}")
    return class_name, inner


def rnn_gru_config(config: dict, owner: str) -> dict:
    """The flat GRU layer config of a Keras ``RNN`` config around one ``GRUCell`` (the cell's arguments and the
    RNN's flags), or ValueError naming the cell's class when it is not a GRUCell."""
    cell = config.get("cell")
    if isinstance(cell, list) or (isinstance(cell, dict) and cell.get("class_name") == "StackedRNNCells"):
        raise ValueError(f"{owner}.from_config received an RNN config around several cells (StackedRNNCells); "
                         "expected an RNN around one GRUCell")
    cell_class, cell_config = unwrap_config(cell, owner, ("GRUCell",)) if isinstance(cell, dict) else (None, None)
    if cell_class is None:
        raise ValueError(f"{owner}.from_config received an RNN config whose 'cell' is {cell!r}; expected "
                         "{'class_name': 'GRUCell', 'config': {...}}")
    flat = {k: v for k, v in cell_config.items() if k not in ("name", "trainable")}
    flat.update({k: v for k, v in config.items() if k != "cell"})
    return flat


def target_spec(target) -> dict:
    """``target`` (a ``tvm.target.Target``) as the plain dict :func:`tvm_gru.targets.resolve` rebuilds it from:
    what a pickled cell or layer holds instead of the TVM object."""
    return json.loads(str(target))


def _physical_memory() -> int:
    """Bytes of RAM on this machine (1 TiB when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def check_weight_memory(units: int, input_dim: int | None, dtype: str) -> None:
    """Refuse sizes whose weights cannot fit in this machine's memory, before numpy tries (MemoryError, OOM kill).

    Counted per weight element: its float64 initial value, the kept array and its packed copy.
    ``input_dim=None`` counts the recurrent kernel (H, 3H) only (the constructor knows no input size yet).
    """
    elements = 3 * units * (units + (input_dim or 0))
    needed = elements * (8 + 2 * np.dtype(dtype).itemsize)
    available = _physical_memory()
    if needed > available:
        what = (f"`units`={units}" if input_dim is None else f"`units`={units} with `input_dim`={input_dim}")
        raise ValueError(f"{what} is too large: its {dtype} weights ({elements:.3g} values, about "
                         f"{needed / 2**30:.3g} GiB to create and pack) do not fit in this machine's "
                         f"{available / 2**30:.3g} GiB of memory; expected a size whose 3*units*(units+input_dim) "
                         f"weights fit")


class GRUCell:
    """Keras v1 GRU cell (defaults: hard_sigmoid, reset_after=False, implementation=1).

    Parameters
    ----------
    units : int
        H, the state width.
    activation, recurrent_activation : str or None
        Keras element-wise activation names (None = linear).
    use_bias : bool
    kernel_initializer, recurrent_initializer, bias_initializer : str, dict or Initializer
    kernel_regularizer, recurrent_regularizer, bias_regularizer : str, dict, Regularizer or None
        Penalties are reported in :attr:`losses`.
    kernel_constraint, recurrent_constraint, bias_constraint : str, dict, Constraint or None
        Applied to weights given to :meth:`set_weights` (as Keras applies them after each update).
    dropout, recurrent_dropout : float
        Inverted-dropout rates for ``training=True`` calls (clamped to [0, 1] like Keras).
    implementation : int
        1 (per-gate products) or 2 (fused products).
    reset_after : bool
    dtype : str
        "float32" or "float64".
    target : None, str, dict or tvm.target.Target
        Where the kernel runs; None = this machine's CPU.
    seed : int, optional
        Seeds weight initialisation and dropout masks.
    name : str, optional
    weight_dtype : None, "float32", "float16" or "int8"
        Not a Keras argument: the storage dtype of the packed kernel and recurrent kernel the compiled step
        streams (None = ``dtype``). "float16" (float32 cells) halves the bytes a step reads; each weight is
        rounded to the nearest half once, at ``set_weights``/``build``, and widened to float32 before its
        multiply-add (inputs, states, bias, accumulation and gate math stay float32). "int8" (float32 cells, CPU
        targets) quarters them: each Keras column (one unit of one gate) is quantized symmetrically to int8 with
        one float32 scale, ``max |column| / 127``; the kernel widens each int8 to float32 in its inner loop and
        scales each product once. Each pre-activation then moves by at most ``(s_x ||x||_1 + s_h ||h||_1) / 2``
        (``s_x``, ``s_h`` the scales of its kernel and recurrent columns). ``get_weights()`` returns the float32
        weights as set; ``get_config()`` lists ``weight_dtype`` only when it is not the default.

    Notes
    -----
    ``copy.deepcopy`` and ``pickle`` copy a cell through its constructor arguments (the initializer,
    regularizer and constraint objects themselves, so custom ones survive; the target as a dict), its weights
    (as set: constraints are not applied again) and its random generator's position and cached dropout masks,
    so the copy computes the same numbers and draws the dropout masks the original would draw next. Compiled
    kernels are not copied: the copy compiles (or loads from the compile cache) on its first call. The copy is
    independent: setting its weights leaves the original unchanged.
    """

    def __init__(self, units, activation="tanh", recurrent_activation="hard_sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0, recurrent_dropout=0.0,
                 implementation=1, reset_after=False, dtype="float32", target=None, seed=None, name=None,
                 weight_dtype=None):
        self.config = GRUConfig(units=units, activation=activation, recurrent_activation=recurrent_activation,
                                use_bias=use_bias, reset_after=reset_after, implementation=implementation,
                                dropout=dropout, recurrent_dropout=recurrent_dropout, dtype=dtype)
        args = dict(kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
                    bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
                    recurrent_regularizer=recurrent_regularizer, bias_regularizer=bias_regularizer,
                    kernel_constraint=kernel_constraint, recurrent_constraint=recurrent_constraint,
                    bias_constraint=bias_constraint)
        check_weight_memory(self.config.units, None, self.config.dtype)
        self.weight_dtype = check_weight_dtype(self.config.dtype, weight_dtype)
        for key, value in args.items():
            setattr(self, key, _SERIAL[key].get(value))
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"`seed` must be an int or None, received {seed!r}")
        if seed is not None and seed < 0:
            raise ValueError(f"`seed` must be a non-negative int or None, received {seed}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a str or None, received {name!r} of type {type(name).__name__}")
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.target = targets.resolve(target)
        self.lanes = targets.lanes(self.target, self.config.dtype)
        if name is None:
            _COUNTER[0] += 1
            name = "gru_cell" if _COUNTER[0] == 1 else f"gru_cell_{_COUNTER[0] - 1}"
        self.name = name
        self.built = False
        self.input_dim = None
        self.kernel = self.recurrent_kernel = self.bias = None
        self._packed = None
        self._runners = {}
        self._fast = None  # the last inference runner's fast call (StepRunner.fast), tried first
        self._masks = {"input": None, "recurrent": None}

    # ------------------------------------------------------------------ Keras properties
    @property
    def units(self) -> int:
        return self.config.units

    @property
    def state_size(self) -> int:
        return self.config.units

    @property
    def output_size(self) -> int:
        return self.config.units

    @property
    def dtype(self) -> str:
        return self.config.dtype

    @property
    def losses(self) -> list:
        """Regularization penalties (floats) of kernel, recurrent kernel and bias, in Keras order."""
        pairs = [(self.kernel_regularizer, self.kernel), (self.recurrent_regularizer, self.recurrent_kernel),
                 (self.bias_regularizer, self.bias)]
        return [float(reg(w)) for reg, w in pairs if reg is not None and w is not None]

    # ------------------------------------------------------------------ weights
    def build(self, input_shape) -> None:
        """Create the weights for inputs of shape ``(..., input_dim)``."""
        if isinstance(input_shape, numbers.Integral):
            input_shape = (input_shape,)
        try:
            input_dim = tuple(input_shape)[-1]
        except (TypeError, IndexError) as err:
            raise TypeError(f"`input_shape` must be a shape tuple like (batch, input_dim); "
                            f"received {input_shape!r}") from err
        input_dim = check_positive_int("input_dim", input_dim)
        check_weight_memory(self.config.units, input_dim, self.config.dtype)
        padded = -(-self.config.units // 8) * 8  # packed weights pad units to whole SIMD blocks (V <= 8)
        check_index_range(f"`units`={self.config.units} with `input_dim`={input_dim}",
                          max(input_dim, self.config.units) * 3 * padded)
        c, dt = self.config, self.config.dtype
        rng = self._rng

        def init(initializer, shape):
            return initializer(shape, dt, rng=None if getattr(initializer, "seed", None) is not None else rng)

        self.input_dim = input_dim
        self.kernel = np.asarray(init(self.kernel_initializer, (input_dim, 3 * c.units)), dt)
        self.recurrent_kernel = np.asarray(init(self.recurrent_initializer, (c.units, 3 * c.units)), dt)
        self.bias = np.asarray(init(self.bias_initializer, c.bias_shape), dt) if c.use_bias else None
        self.built = True
        self._repack()

    def get_weights(self) -> list:
        """``[kernel (I, 3H), recurrent_kernel (H, 3H), bias]`` (no bias when ``use_bias=False``)."""
        self._require_built("get_weights")
        weights = [self.kernel, self.recurrent_kernel] + ([self.bias] if self.config.use_bias else [])
        return [w.copy() for w in weights]

    def set_weights(self, weights) -> None:
        """Set weights in Keras order; builds the cell from the kernel shape if needed."""
        c = self.config
        expected = 3 if c.use_bias else 2
        if isinstance(weights, (str, bytes, dict, np.ndarray)) or not hasattr(weights, "__iter__"):
            raise TypeError(f"`weights` must be a list of {expected} arrays (kernel, recurrent_kernel"
                            f"{', bias' if c.use_bias else ''}); received {type(weights).__name__}")
        weights = list(weights)
        if len(weights) != expected:
            raise ValueError(f"`weights` must be a list of {expected} arrays (kernel, recurrent_kernel"
                             f"{', bias' if c.use_bias else ''}); received {len(weights)}")
        arrays = [as_array(f"weights[{i}]", w) for i, w in enumerate(weights)]
        input_dim = self.input_dim if self.built else (arrays[0].shape[0] if arrays[0].ndim == 2 else None)
        if not self.built and not input_dim:
            raise ValueError(f"`kernel` (weights[0]) must have shape (input_dim, {3 * c.units}) with input_dim > 0; "
                             f"received {arrays[0].shape}")
        shapes = [(input_dim, 3 * c.units), (c.units, 3 * c.units)] + ([c.bias_shape] if c.use_bias else [])
        names = ["kernel", "recurrent_kernel", "bias"]
        for i, (arr, shape) in enumerate(zip(arrays, shapes)):
            if arr.shape != shape:
                raise ValueError(f"`{names[i]}` (weights[{i}]) must have shape {shape}; received {arr.shape}")
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"`{names[i]}` (weights[{i}]) must be numeric (float or int); received dtype "
                                f"{arr.dtype}")
        cons = [self.kernel_constraint, self.recurrent_constraint, self.bias_constraint]
        out = []
        for arr, con in zip(arrays, cons):
            arr = np.array(arr, dtype=c.dtype, copy=True)
            out.append(np.asarray(con(arr), c.dtype) if con is not None else arr)
        check_storable(self.weight_dtype, {"kernel": out[0], "recurrent_kernel": out[1]})  # before any change
        self.input_dim = input_dim
        self.kernel, self.recurrent_kernel = out[0], out[1]
        self.bias = out[2] if c.use_bias else None
        self.built = True
        self._repack()

    def _repack(self) -> None:
        self._packed = pack_weights(self.config, self.kernel, self.recurrent_kernel, self.bias, self.lanes,
                                    self.weight_dtype)
        for runner in self._runners.values():
            runner.set_weights(self._packed.values())
        self._fast = None  # it is bound to the old weights' tensors; the next call takes the checked path once

    # ------------------------------------------------------------------ copies
    def _constructor_args(self) -> dict:
        """Keyword arguments that construct an unbuilt copy of this cell: :meth:`get_config` with the live
        initializer, regularizer and constraint objects (a custom object has no config to rebuild it from)."""
        args = self.get_config()
        args.pop("trainable")
        args.update({key: getattr(self, key) for key in _SERIAL}, target=target_spec(self.target))
        return args

    def __getstate__(self) -> dict:
        """Constructor arguments, weights, RNG position and dropout masks; no compiled kernel (see Notes)."""
        weights = None
        if self.built:
            weights = {"input_dim": self.input_dim, "kernel": self.kernel,
                       "recurrent_kernel": self.recurrent_kernel, "bias": self.bias}
        return {"args": self._constructor_args(), "weights": weights, "rng": self._rng.bit_generator.state,
                "masks": dict(self._masks)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["args"])  # validates the arguments again and starts with no compiled kernel
        weights = state["weights"]
        if weights is not None:  # as set, not through set_weights: constraints were applied when they were set
            dt = self.config.dtype
            self.input_dim = int(weights["input_dim"])
            self.kernel = np.array(weights["kernel"], dt)
            self.recurrent_kernel = np.array(weights["recurrent_kernel"], dt)
            self.bias = None if weights["bias"] is None else np.array(weights["bias"], dt)
            self.built = True
            self._repack()
        self._rng.bit_generator.state = state["rng"]
        self._masks = {kind: None if m is None else np.array(m) for kind, m in state["masks"].items()}

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(f"`{what}` needs a built cell: call build(input_shape) or the cell first")

    # ------------------------------------------------------------------ config
    def storage_dtype(self, weight_dtype=None) -> str:
        """The storage dtype of the weight matrices for an export or a compiled model: ``weight_dtype`` checked
        for this cell's dtype (ValueError naming ``weight_dtype``), or, for None, the cell's own."""
        return check_weight_dtype(self.config.dtype, self.weight_dtype if weight_dtype is None else weight_dtype)

    def get_config(self) -> dict:
        """A flat dict in the tf_keras ``GRUCell.get_config()`` format (plus ``seed``, and ``weight_dtype`` when
        it is not the cell dtype)."""
        c = self.config
        cfg = {"name": self.name, "trainable": True, "dtype": c.dtype, "units": c.units,
               "activation": c.activation, "recurrent_activation": c.recurrent_activation, "use_bias": c.use_bias}
        for key, module in _SERIAL.items():
            obj = getattr(self, key)
            cfg[key] = None if obj is None else module.serialize(obj, with_module=True)
        cfg.update(dropout=c.dropout, recurrent_dropout=c.recurrent_dropout, implementation=c.implementation,
                   reset_after=c.reset_after, seed=self.seed)
        if self.weight_dtype != c.dtype:  # not a Keras key: only when it changes something
            cfg["weight_dtype"] = self.weight_dtype
        return cfg

    @classmethod
    def from_config(cls, config: dict, target=None) -> "GRUCell":
        """Build a cell from :meth:`get_config` output, a real tf_keras ``GRUCell.get_config()`` dict, its
        serialised ``{"class_name": "GRUCell", "config": {...}}`` form, or a Keras ``RNN`` config holding one
        ``GRUCell`` (its cell)."""
        class_name, config = unwrap_config(config, "GRUCell", ("GRUCell", "RNN"))
        if class_name == "RNN":
            rnn_gru_config(config, "GRUCell")  # the checks: one cell, a GRUCell
            config = config["cell"]["config"]
        return cls(**constructor_kwargs(cls, config, target))

    # ------------------------------------------------------------------ states and masks
    def get_initial_state(self, inputs=None, batch_size=None, dtype=None) -> np.ndarray:
        """Zeros of shape (batch, units): batch from ``inputs`` or ``batch_size``."""
        if inputs is not None:
            inputs = as_array("inputs", inputs)
            batch_size = inputs.shape[0]
            dtype = dtype or inputs.dtype
        if batch_size is None:
            raise ValueError("batch_size and dtype cannot be None while constructing initial state: "
                             "pass `inputs` or `batch_size`")
        batch_size = check_positive_int("batch_size", batch_size) if batch_size != 0 else 0
        return np.zeros((batch_size, self.units), dtype=np.dtype(dtype or self.config.dtype))

    def reset_dropout_mask(self) -> None:
        self._masks["input"] = None

    def reset_recurrent_dropout_mask(self) -> None:
        self._masks["recurrent"] = None

    def _mask(self, kind: str, rate: float, count: int, shape: tuple) -> np.ndarray:
        """Cached inverted-dropout masks (count, *shape): 0 with probability ``rate``, else 1/(1-rate)."""
        cached = self._masks[kind]
        if cached is not None and cached.shape == (count, *shape):
            return cached
        if rate >= 1.0:
            raise ValueError(f"`{'dropout' if kind == 'input' else 'recurrent_dropout'}` must be in [0, 1) to "
                             f"train; received rate={rate}")
        keep = self._rng.random((count, *shape)) >= rate
        mask = keep.astype(self.config.dtype) / np.asarray(1.0 - rate, self.config.dtype)
        self._masks[kind] = mask
        return mask

    # ------------------------------------------------------------------ call
    def __call__(self, inputs, states, training=None):
        """One step: ``output, [new_state] = cell(inputs, [state])``.

        Parameters
        ----------
        inputs : (B, I) array or DLPack tensor (float; cast to the cell dtype)
        states : list/tuple holding a (B, H) array (only ``states[0]`` is read), or a bare (B, H) array
        training : bool or None
            True applies dropout masks (when rates > 0); None/False is inference.

        Returns
        -------
        output : (B, H) numpy array of the cell dtype
        new_states : ``[output]`` for list/tuple states, ``output`` for a bare state
        """
        nested = type(states) is list or type(states) is tuple
        h = states[0] if nested and states else states
        runner = self._fast
        if runner is not None and (training is None or training is False) and type(inputs) is np.ndarray \
                and type(h) is np.ndarray:
            # Fast path: the kernel's binder checks shape, dtype and layout (DLPack refuses read-only, object
            # and byte-swapped arrays with BufferError); anything else takes the checked path.
            try:
                out = runner(inputs, h)
                return out, ([out] if nested else out)
            except (TypeError, ValueError, BufferError):
                pass
        out = self._call_checked(inputs, states, nested, training)
        return out, ([out] if nested else out)

    def _call_checked(self, inputs, states, nested, training):
        """Validate, convert (cast, make contiguous) and run; compiles a kernel for a new batch size."""
        if nested and len(states) == 0:
            raise ValueError("`states` must hold one (batch, units) array; received an empty sequence")
        training = check_training(training)
        x = as_array("inputs", inputs)
        h = as_array("states[0]" if nested else "states", states[0] if nested else states)
        if not self.built:
            if x.ndim != 2:
                raise ValueError(f"`inputs` must have rank 2 (batch, input_dim); received shape {x.shape}")
            check_step_args(x, h, x.shape[1], self.config.units)  # nothing is built from a bad first call
            self.build(x.shape)
        check_step_args(x, h, self.input_dim, self.config.units)
        check_index_range(f"`inputs` batch size {x.shape[0]} (input_dim={self.input_dim}, units={self.units})",
                          3 * x.shape[0] * max(self.input_dim, self.units), ": split the batch into smaller calls")
        dt = self.config.dtype
        x = kernel_view(x, dt)
        h = kernel_view(h, dt)
        batch = x.shape[0]
        if batch == 0:
            return np.zeros((0, self.units), dt)
        masks = self._training_masks(batch) if training else ()
        runner = self._runners.get((batch, len(masks))) or self._make_runner(batch, [m.shape for m in masks])
        if not masks:
            self._fast = runner.fast
        return runner(x, h, masks)

    def _training_masks(self, batch: int) -> tuple:
        c = self.config
        masks = []
        if 0.0 < c.dropout:
            count = 3 if c.implementation == 1 else 1
            masks.append(self._mask("input", c.dropout, count, (batch, self.input_dim)))
        if 0.0 < c.recurrent_dropout:
            if not masks:  # the kernel takes masks in a fixed order; no input dropout = all-ones input mask
                masks.append(np.ones((3, batch, self.input_dim), c.dtype))
            masks.append(self._mask("recurrent", c.recurrent_dropout, 3, (batch, c.units)))
        return tuple(masks)

    def _make_runner(self, batch: int, mask_shapes: list):
        from ..build.step import compile_step  # noqa: PLC0415  (the compiler is imported on first call only)
        from ..runtime import StepRunner  # noqa: PLC0415

        if not targets.runs_here(self.target):
            raise RuntimeError(f"this cell targets {targets.family(self.target)} (mcpu/arch "
                               f"{self.target.attrs.get('mcpu', self.target.attrs.get('arch', '-'))}), which "
                               "cannot run in this process: write an artifact with cell.export(path) and run it "
                               "with tvm_gru.load(path) on the device")

        input_masks = mask_shapes[0][0] if mask_shapes else 0
        recurrent_masks = 3 if len(mask_shapes) == 2 else 0
        spec = StepSpec(self.config, batch=batch, input_dim=self.input_dim, input_masks=input_masks,
                        recurrent_masks=recurrent_masks, lanes=self.lanes, weight_dtype=self.weight_dtype)
        runner = StepRunner(compile_step(spec, self.target), batch, self.units, self.config.dtype,
                            self._packed.values())
        self._runners[(batch, len(mask_shapes))] = runner
        return runner

    def export(self, path, target=None, batch=1, overwrite=False, weight_dtype=None):
        """Write a deployable artifact of this cell (see :func:`tvm_gru.deploy.export.export_cell`); returns its folder.

        ``target`` defaults to the cell's own target; ``batch`` is one batch size or a list of them;
        ``weight_dtype`` ("float32"/"float16"/"int8") the storage dtype of the exported weight matrices (None: the
        cell's own ``weight_dtype``).
        """
        return hooks.writer("export_cell")(self, path, target=self.target if target is None else target, batch=batch,
                           overwrite=overwrite, weight_dtype=weight_dtype)

    def to_onnx(self, path=None, opset: int = 14, batch=None):
        """Write one step as an ONNX GRU node (see :func:`tvm_gru.interop.onnx_export.cell_to_onnx`)."""
        return hooks.writer("cell_to_onnx")(self, path, opset=opset, batch=batch)

    def __repr__(self) -> str:
        c = self.config
        return (f"GRUCell(units={c.units}, activation={c.activation!r}, recurrent_activation="
                f"{c.recurrent_activation!r}, reset_after={c.reset_after}, implementation={c.implementation}, "
                f"dtype={c.dtype!r}" + (f", weight_dtype={self.weight_dtype!r}" if self.weight_dtype != c.dtype else "")
                + f", target={self.target.kind.name})")
