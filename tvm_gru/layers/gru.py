"""``GRU``: the Keras v1 GRU layer, a whole sequence per compiled call.

Mirrors tf_keras ``gru_v1.GRU`` (``tf.compat.v1.keras.layers.GRU`` with ``TF_USE_LEGACY_KERAS=1``): the cell's
arguments plus ``return_sequences``, ``return_state``, ``go_backwards``, ``stateful``, ``unroll`` (accepted, no
effect: there is no Python loop to unroll) and ``time_major``; ``layer(inputs, mask=None, training=None,
initial_state=None)``; ``reset_states``; the cell's weights; a flat ``get_config`` like tf_keras.

The layer holds a :class:`tvm_gru.layers.cell.GRUCell` for everything about weights (creation, initializers,
regularizers, constraints, dropout masks) and runs the sequence kernel of :mod:`tvm_gru.ops.sequence`.
"""

from __future__ import annotations

import dataclasses
import numbers
import threading

import numpy as np

from ..keras_objects import regularizers
from ..ops.config import GRUConfig
from ..ops.sequence import SequenceSpec, pack_sequence_weights, padded_recurrent_mask
from ..runtime.format import LAYER_FLAGS
from ..runtime.layer_calls import NOT_PLAIN, SequenceLayerCalls, check_training, kernel_view, max_steps
from . import hooks
from .cell import GRUCell, constructor_kwargs, rnn_gru_config, unwrap_config
from .inputs import as_array

__all__ = ["GRU"]

_COUNTER = [0]
_FLAGS = (*LAYER_FLAGS, "unroll")  # the layer options of its Keras config
# Keys of a tf_keras GRU config that carry no meaning here.
_IGNORED_KEYS = ("batch_input_shape", "enable_caching_device", "cell", "input_spec")



def _from_cell(name: str, doc: str) -> property:
    """A read-only layer property that reads the cell's ``name`` (its GRUConfig field, else its attribute), as the
    tf_keras GRU layer's properties read its cell's."""
    def get(self):
        config = self.cell.config
        return getattr(config, name) if name in _CONFIG_FIELDS else getattr(self.cell, name)
    return property(get, doc=f"The cell's ``{name}``: {doc}.")


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(GRUConfig))

class GRU(SequenceLayerCalls):
    """Keras v1 GRU layer (defaults: hard_sigmoid, reset_after=False, implementation=1).

    Parameters
    ----------
    units, activation, recurrent_activation, use_bias, kernel_initializer, recurrent_initializer,
    bias_initializer, kernel_regularizer, recurrent_regularizer, bias_regularizer, kernel_constraint,
    recurrent_constraint, bias_constraint, dropout, recurrent_dropout, implementation, reset_after, dtype,
    target, seed
        As for :class:`tvm_gru.GRUCell`.
    weight_dtype : None, "float32", "float16" or "int8"
        Not a Keras argument: the storage dtype of the kernel and recurrent kernel the compiled kernels stream (None:
        ``dtype``), as for :class:`tvm_gru.GRUCell` (float32 layers only for the narrow ones): "float16" rounds each
        weight to the nearest half, "int8" quantizes each Keras column symmetrically with one float32 scale
        (``max |column| / 127``); both are widened to float32 as they are read, inputs, states, bias, accumulation
        and gate math stay float32. Each pre-activation of a step then moves by at most
        ``(s_x ||x||_1 + s_h ||h||_1) / 2`` (int8; :func:`tvm_gru.runtime.packing.int8_error_bound`).
        ``get_weights()`` returns the weights as set; ``get_config()`` lists ``weight_dtype`` only when it is not
        the default. The whole-sequence kernel, a stateful layer's single frames (the cell's step kernel) and
        :meth:`export` use the same storage.
    activity_regularizer : str, dict, Regularizer or None
        Penalty on the outputs of each call (divided by the batch size, as Keras does), in :attr:`losses`.
    return_sequences : bool
        Return the output of every step (B, T, H) instead of the last one (B, H).
    return_state : bool
        Also return the final state: ``[output, state]``.
    go_backwards : bool
        Process the sequence backwards; outputs are in processing order (as Keras returns them).
    stateful : bool
        Keep the final state of each call as the initial state of the next (streaming); see
        :meth:`reset_states`. The batch size is fixed by the first call.
    unroll : bool
        Accepted for compatibility; the sequence always runs as one compiled loop.
    time_major : bool
        Inputs (T, B, I) and sequence outputs (T, B, H) instead of (B, T, ...).
    zero_output_for_mask : bool
        Masked steps output zeros instead of the previous output (Keras RNN option).
    name : str, optional

    Notes
    -----
    Threads: concurrent calls of one stateful layer are serialised by a lock held from reading the carried
    state to storing the new one (also by :meth:`reset_states` and :attr:`states`), so no update is lost; the
    order of the threads' calls is whatever order they take the lock in. Calls of a layer that is not stateful
    take no lock and may run at the same time.

    Copies: ``copy.deepcopy`` and ``pickle`` copy the layer through its constructor arguments, its cell (see
    :class:`tvm_gru.GRUCell`: weights, RNG position, dropout masks) and, when stateful, its current state; the
    copy is independent of the original and compiles its kernels on its first call.
    """

    def __init__(self, units, activation="tanh", recurrent_activation="hard_sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, implementation=1, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, reset_after=False, time_major=False,
                 zero_output_for_mask=False, dtype="float32", target=None, seed=None, name=None, weight_dtype=None):
        self.cell = GRUCell(units, activation=activation, recurrent_activation=recurrent_activation,
                            use_bias=use_bias, kernel_initializer=kernel_initializer,
                            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                            kernel_regularizer=kernel_regularizer, recurrent_regularizer=recurrent_regularizer,
                            bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                            recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint,
                            dropout=dropout, recurrent_dropout=recurrent_dropout, implementation=implementation,
                            reset_after=reset_after, dtype=dtype, target=target, seed=seed, name="gru_cell",
                            weight_dtype=weight_dtype)
        flags = dict(return_sequences=return_sequences, return_state=return_state, go_backwards=go_backwards,
                     stateful=stateful, unroll=unroll, time_major=time_major,
                     zero_output_for_mask=zero_output_for_mask)
        for key, value in flags.items():
            if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, numbers.Integral)
                                                               and value in (0, 1)):
                raise TypeError(f"`{key}` must be a bool, received {value!r}")
            setattr(self, key, bool(value))
        self.activity_regularizer = regularizers.get(activity_regularizer)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a str or None, received {name!r} of type {type(name).__name__}")
        if name is None:
            _COUNTER[0] += 1
            name = "gru" if _COUNTER[0] == 1 else f"gru_{_COUNTER[0] - 1}"
        self.name = name
        self._runners = {}
        self._fast = None
        self._packed = None
        self._packed_src = None
        self._states = None  # stateful: [current, spare] (B, H) buffers, swapped after each call
        self._lock = threading.Lock()  # stateful: held from reading _states to swapping in the new state
        self._activity_losses = []

    # ------------------------------------------------------------------ Keras properties
    # ------------------------------------------------------------------ the cell's attributes, as in tf_keras
    units = _from_cell("units", "H, the number of units")
    activation = _from_cell("activation", "the candidate activation's name")
    recurrent_activation = _from_cell("recurrent_activation", "the gates' activation's name")
    use_bias = _from_cell("use_bias", "whether the cell has a bias")
    reset_after = _from_cell("reset_after", "False (v1 default): the reset gate applies before the recurrent product")
    implementation = _from_cell("implementation", "1 or 2 (the dropout mask layout)")
    dropout = _from_cell("dropout", "the input dropout rate")
    recurrent_dropout = _from_cell("recurrent_dropout", "the recurrent dropout rate")
    dtype = _from_cell("dtype", "the compute dtype")
    weight_dtype = _from_cell("weight_dtype", "the storage dtype of the kernel and recurrent kernel")
    kernel_initializer = _from_cell("kernel_initializer", "its Keras initializer object")
    recurrent_initializer = _from_cell("recurrent_initializer", "its Keras initializer object")
    bias_initializer = _from_cell("bias_initializer", "its Keras initializer object")
    kernel_regularizer = _from_cell("kernel_regularizer", "its Keras regularizer or None")
    recurrent_regularizer = _from_cell("recurrent_regularizer", "its Keras regularizer or None")
    bias_regularizer = _from_cell("bias_regularizer", "its Keras regularizer or None")
    kernel_constraint = _from_cell("kernel_constraint", "its Keras constraint or None")
    recurrent_constraint = _from_cell("recurrent_constraint", "its Keras constraint or None")
    bias_constraint = _from_cell("bias_constraint", "its Keras constraint or None")
    kernel = _from_cell("kernel", "the (I, 3H) input kernel")
    recurrent_kernel = _from_cell("recurrent_kernel", "the (H, 3H) recurrent kernel")
    bias = _from_cell("bias", "the bias ((3H,) or (2, 3H)) or None")
    target = _from_cell("target", "the TVM target the kernels are compiled for")
    seed = _from_cell("seed", "the dropout seed")
    state_size = _from_cell("state_size", "H")
    output_size = _from_cell("output_size", "H")

    _array = staticmethod(as_array)  # host views of arrays and DLPack tensors (SequenceLayerCalls)

    @property
    def built(self) -> bool:
        return self.cell.built

    @property
    def input_dim(self):
        return self.cell.input_dim

    @property
    def weights(self) -> list:
        """The live weight arrays ``[kernel, recurrent_kernel(, bias)]``."""
        if not self.built:
            return []
        cell = self.cell
        return [cell.kernel, cell.recurrent_kernel] + ([cell.bias] if cell.config.use_bias else [])

    trainable_weights = weights

    @property
    def losses(self) -> list:
        """Weight penalties of the cell, then the activity penalties of the last call."""
        return self.cell.losses + list(self._activity_losses)

    # ------------------------------------------------------------------ weights
    def build(self, input_shape) -> None:
        """Create the weights for inputs of shape ``(batch, time, input_dim)`` (or ``(..., input_dim)``)."""
        try:
            shape = tuple(input_shape)
        except TypeError as err:
            raise TypeError(f"`input_shape` must be a shape tuple like (batch, time, input_dim); "
                            f"received {input_shape!r}") from err
        self.cell.build(shape)
        self._repack()

    def get_weights(self) -> list:
        return self.cell.get_weights()

    def set_weights(self, weights) -> None:
        """Keras order: ``[kernel (I, 3H), recurrent_kernel (H, 3H)(, bias)]``; builds the layer if needed."""
        self.cell.set_weights(weights)
        self._repack()

    def _repack(self) -> None:
        cell = self.cell
        self._packed = pack_sequence_weights(cell.config, cell.kernel, cell.recurrent_kernel, cell.bias,
                                             cell.lanes, cell.weight_dtype)
        self._packed_src = (cell.kernel, cell.recurrent_kernel, cell.bias)
        for runner in self._runners.values():
            runner.set_weights(self._packed)

    def _check_fresh(self) -> None:
        """Repack when the cell's weights were replaced behind the layer's back (``layer.cell.set_weights``)."""
        src = self._packed_src
        cell = self.cell
        if src is None or src[0] is not cell.kernel or src[1] is not cell.recurrent_kernel or src[2] is not cell.bias:
            self._repack()

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """A flat dict in the tf_keras ``GRU.get_config()`` format (plus ``seed``)."""
        cell_cfg = self.cell.get_config()
        cfg = {"name": self.name, "trainable": True, "dtype": cell_cfg["dtype"]}
        cfg.update({k: getattr(self, k) for k in _FLAGS if k != "zero_output_for_mask"})
        if self.zero_output_for_mask:
            cfg["zero_output_for_mask"] = True
        for key, value in cell_cfg.items():
            if key in ("name", "trainable", "dtype", "seed"):
                continue
            cfg[key] = value
            if key == "bias_regularizer":
                reg = self.activity_regularizer
                cfg["activity_regularizer"] = None if reg is None else regularizers.serialize(reg, with_module=True)
        cfg["seed"] = cell_cfg["seed"]
        return cfg

    @classmethod
    def from_config(cls, config: dict, target=None) -> "GRU":
        """Build a layer from :meth:`get_config` output, a tf_keras ``GRU.get_config()`` dict, the serialised
        ``{"class_name": "GRU", "config": {...}}`` form, or a Keras ``RNN`` config holding one ``GRUCell``."""
        class_name, config = unwrap_config(config, "GRU", ("GRU", "GRUV1", "RNN"))
        if class_name == "RNN" or (class_name is None and "cell" in config and "units" not in config):
            config = rnn_gru_config(config, "GRU")
        cfg = {k: v for k, v in config.items() if k not in _IGNORED_KEYS}
        return cls(**constructor_kwargs(cls, cfg, target))

    # ------------------------------------------------------------------ copies
    def __getstate__(self) -> dict:
        """Constructor arguments, the cell, the current state (stateful) and the last activity losses."""
        args = self.get_config()
        args.pop("trainable")
        cell_args = self.cell._constructor_args()  # noqa: SLF001 (the live initializer/... objects, the target)
        args.update({key: value for key, value in cell_args.items() if key in args and key != "name"},
                    target=cell_args["target"], activity_regularizer=self.activity_regularizer)
        with self._lock:  # not a state a concurrent call is half-way through replacing
            states = None if self._states is None else self._states[0].copy()
        return {"args": args, "cell": self.cell, "states": states, "activity_losses": list(self._activity_losses)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["args"])  # validates the arguments again; no compiled kernel, a new lock
        self.cell = state["cell"]
        if self.cell.built:
            self._repack()
        if state["states"] is not None:
            current = np.array(state["states"], self.cell.dtype)
            self._states = [current, np.zeros_like(current)]
        self._activity_losses = list(state["activity_losses"])

    def export(self, path, target=None, batch=1, masking=True, overwrite=False, weight_dtype=None):
        """Write a deployable artifact of this layer (see :func:`tvm_gru.deploy.export.export_layer`); returns its
        folder.

        ``target`` defaults to the layer's own target; ``batch`` is one batch size or a list of them;
        ``weight_dtype`` ("float32"/"float16"/"int8") the storage dtype of the exported weight matrices (None: the
        layer's own ``weight_dtype``).
        """
        return hooks.writer("export_layer")(self, path, target=self.cell.target if target is None else target,
                                            batch=batch, masking=masking, overwrite=overwrite,
                                            weight_dtype=weight_dtype)

    def to_onnx(self, path=None, opset: int = 14, batch=None):
        """Write the layer as one ONNX GRU node (see :func:`tvm_gru.interop.onnx_export.layer_to_onnx`)."""
        return hooks.writer("layer_to_onnx")(self, path, opset=opset, batch=batch)

    # ------------------------------------------------------------------ call
    def __call__(self, inputs, mask=None, training=None, initial_state=None):
        """Run the whole sequence.

        Parameters
        ----------
        inputs : (B, T, I) array or DLPack tensor ((T, B, I) when ``time_major``); or a list
            ``[inputs, initial_state]`` as Keras accepts
        mask : (B, T) bool array ((T, B) when ``time_major``), optional
            False = the step is padding: the state is kept and the previous output repeated.
        training : bool or None
            True applies dropout (the same masks at every step, as the Keras RNN layer does).
        initial_state : (B, H) array or a list of one, optional
            Overrides the zero (or, when stateful, the carried) initial state.

        Returns
        -------
        output : (B, T, H) if ``return_sequences`` else (B, H); with ``return_state``: ``[output, state]``
        """
        fast = self._fast
        if fast is not None and mask is None and (training is None or training is False) \
                and type(inputs) is np.ndarray:
            h0 = self._plain_initial(initial_state)
            if h0 is not NOT_PLAIN:
                try:
                    return fast(inputs, h0)
                except (TypeError, ValueError, IndexError, BufferError):
                    pass  # not the compiled shape/dtype/layout: the checked path says why or converts
        return self._call_checked(inputs, mask, training, initial_state)

    def _call_checked(self, inputs, mask, training, initial_state):
        if self.stateful:  # the state is read, run and replaced by one caller at a time
            with self._lock:
                return self._run_checked(inputs, mask, training, initial_state)
        return self._run_checked(inputs, mask, training, initial_state)

    def _run_checked(self, inputs, mask, training, initial_state):
        training = check_training(training)
        inputs, initial_state = self._split_inputs(inputs, initial_state)
        x = as_array("inputs", inputs)
        if x.ndim == 3 and x.dtype.kind == "f" and not self.built:
            self.build(x.shape)
        x = self._sequence_input(x, self.input_dim)
        self._check_fresh()
        batch, steps = (x.shape[1], x.shape[0]) if self.time_major else (x.shape[0], x.shape[1])
        x = kernel_view(x, self.cell.dtype)
        h0 = self._initial_state(initial_state, batch)
        valid = self._mask(mask, x.shape[:2]) if mask is not None else None
        masks = ()
        if training and (self.cell.config.dropout > 0 or self.cell.config.recurrent_dropout > 0) and batch:
            self.cell.reset_dropout_mask()  # the Keras RNN layer draws new masks on each call
            self.cell.reset_recurrent_dropout_mask()
            masks = self.cell._training_masks(batch)  # noqa: SLF001 (the cell owns the mask semantics)
        if batch == 0 or steps == 0:
            return self._empty_call(x.shape, h0)
        runner = self._runner(batch, valid is not None, masks)
        if valid is None and not masks:
            self._fast = runner.fast
        extra = list(masks[:1])
        if len(masks) == 2:
            extra.append(padded_recurrent_mask(masks[1], self.cell.lanes))
        return runner.run(x, h0, valid, extra)

    def _runner(self, batch, masked, masks):
        key = (batch, masked, tuple(m.shape[0] for m in masks), self.return_sequences, self.time_major,
               self.zero_output_for_mask)
        runner = self._runners.get(key)
        if runner is None:
            from .. import targets  # noqa: PLC0415

            target = self.cell.target
            if not targets.runs_here(target):
                raise RuntimeError(f"this layer targets {targets.family(target)}, which cannot run in this "
                                   "process; the whole-sequence kernel runs on this machine's CPU only "
                                   "(use target=None)")
            spec = SequenceSpec(self.cell.config, batch=batch, input_dim=self.input_dim, lanes=self.cell.lanes,
                                time_major=self.time_major, masked=masked,
                                zero_output_for_mask=self.zero_output_for_mask,
                                return_sequences=self.return_sequences,
                                input_masks=masks[0].shape[0] if masks else 0,
                                recurrent_masks=3 if len(masks) == 2 else 0, weight_dtype=self.cell.weight_dtype)
            runner = _Runner(self, spec, self._packed)
            self._runners[key] = runner
        return runner

    def __repr__(self) -> str:
        c = self.cell.config
        return (f"GRU(units={c.units}, activation={c.activation!r}, recurrent_activation={c.recurrent_activation!r}, "
                f"reset_after={c.reset_after}, return_sequences={self.return_sequences}, "
                f"return_state={self.return_state}, go_backwards={self.go_backwards}, stateful={self.stateful}"
                + (f", weight_dtype={self.weight_dtype!r}" if self.weight_dtype != c.dtype else "") + ")")




class _Runner:
    """The compiled sequence kernels of one batch size / variant, bound to the packed weights and scratch.

    Nothing the caller does not get back is allocated or exported per call (see
    :class:`tvm_gru.runtime.ffi_args.SequenceOutputs`): the zero initial state, the unused ``last`` / ``state``
    outputs and a stateful layer's two state buffers are wrapped once, and returned outputs come from pools.
    Calls of a few steps (streaming) may run a serial kernel (see ``CPUSequenceRule.short_schedule``), and a
    stateful layer's single frames may run the cell's step kernel (see :meth:`_frame`).
    """

    def __init__(self, layer, spec, packed):
        from ..build.sequence import compile_sequence, compile_short_sequence, frames_on_step_kernel  # noqa: PLC0415
        from ..runtime.ffi_args import SequenceOutputs  # noqa: PLC0415

        self.layer, self.spec = layer, spec
        target = layer.cell.target
        self.fn = compile_sequence(spec, target)
        self.short_steps, self.short_fn = compile_short_sequence(spec, target) or (0, None)
        self.frames_on_step = frames_on_step_kernel(spec, target)
        self.outputs = SequenceOutputs(spec.batch, spec.config.units, spec.config.dtype, spec.return_sequences,
                                       spec.time_major, layer.return_state and not layer.stateful)
        # The kernel's per-call buffers (inputs, input projections, outputs) grow with the step count, and it
        # indexes them with 32-bit integers: longer calls are refused (a stateful layer can take them in chunks).
        self.max_steps = max_steps(spec.batch, spec.input_dim, spec.config.units)  # longer: the checked path refuses
        self.set_weights(packed)
        self._frame_fn = None  # built on the first single streamed frame
        self.fast = self._make_fast()

    def set_weights(self, packed) -> None:
        import tvm_ffi  # noqa: PLC0415

        self._keep = list(packed.values())
        self.wargs = tuple(tvm_ffi.from_dlpack(w) for w in self._keep)

    def kernel(self, steps):
        return self.short_fn if steps <= self.short_steps else self.fn

    def _call(self, x, h0, steps, valid=None, extra=()):
        """Run the kernel; ``h0`` None = the zero state (or, when stateful, the carried one)."""
        layer = self.layer
        arrays, carried, out_args = self.outputs.take(steps, layer._states if layer.stateful else None)  # noqa: SLF001
        h0 = carried if h0 is None else h0
        head = (x, h0) if valid is None else (x, h0, valid)
        self.kernel(steps)(*head, *self.wargs, *extra, *out_args, int(layer.go_backwards))
        return self._finish(*arrays)

    def run(self, x, h0, valid, extra):
        """Checked path: ``x`` is contiguous of the kernel dtype, ``h0`` (B, H) or None for zeros / carried."""
        steps = x.shape[0] if self.spec.time_major else x.shape[1]
        if self.layer.stateful and h0 is self.layer._states[0]:  # noqa: SLF001
            h0 = None  # the carried state: through its cached tensor
        return self._call(x, h0, steps, valid, extra)

    def _finish(self, seq, last, state):
        layer = self.layer
        if layer.stateful:  # the kernel wrote the new state into the spare buffer: it becomes current
            layer._states.reverse()  # noqa: SLF001
        out = seq if seq is not None else last
        result = [out, state.copy() if layer.stateful else state] if layer.return_state else out
        if layer.activity_regularizer is not None:
            outs = result if isinstance(result, list) else [result]
            batch = max(1, self.spec.batch)
            layer._activity_losses = [layer.activity_regularizer(o) / batch for o in outs]  # noqa: SLF001
        return result

    def _make_fast(self):
        """The path of repeated calls: no checks beyond the kernel's own argument binder, nothing allocated or
        exported but the input and the returned outputs. The frame-by-frame streaming case (stateful, last
        output only) is spelled out: its Python is most of a small frame's cost."""
        layer, spec, check_fresh = self.layer, self.spec, self.layer._check_fresh  # noqa: SLF001
        time_axis = 0 if spec.time_major else 1
        batch, max_steps, call, outputs = spec.batch, self.max_steps, self._call, self.outputs
        short_steps, short_fn, full_fn = self.short_steps, self.short_fn, self.fn
        stateful, streaming, stream = layer.stateful, layer._streams_frames, layer._stream_call  # noqa: SLF001
        frames_on_step = self.frames_on_step
        # The lock as two calls and try/finally, not `with`: ~70 ns less per frame (the __exit__ protocol).
        acquire, release = layer._lock.acquire, layer._lock.release  # noqa: SLF001

        def fast(x, initial=None):
            """``initial``: a (B, H) numpy array overriding the zero or carried state (the kernel checks it)."""
            check_fresh()  # the cell's weights replaced behind the layer's back?
            steps = x.shape[time_axis]
            if steps == 0 or steps > max_steps:
                raise ValueError("empty or too long sequence")  # the checked path handles it
            if not stateful:
                return call(x, initial, steps)
            acquire()  # held from reading the carried state to swapping in the new one (see GRU Notes)
            try:
                states = layer._states  # noqa: SLF001
                if states is None or states[0].shape[0] != batch:
                    raise ValueError("stateful layer: no state for this batch yet")
                if not streaming:
                    return call(x, initial, steps)
                if steps == 1 and frames_on_step:
                    return (self._frame_fn or self._frame())(x, initial)
                return stream(x, initial, outputs, short_fn if steps <= short_steps else full_fn, self.wargs)
            finally:
                release()

        return fast

    def _frame(self):
        """``frame(x, initial)``: one streamed frame through the cell's step kernel
        (``SequenceLayerCalls._frame_call``), where that is the faster single step (``frames_on_step``). It shares
        the cell's packed weights (which follow ``cell.set_weights``) and compiled kernel."""
        layer, outputs, cell, batch = self.layer, self.outputs, self.layer.cell, self.spec.batch
        step = cell._runners.get((batch, 0)) or cell._make_runner(batch, [])  # noqa: SLF001 (shares its weights)
        frame_call, run = layer._frame_call, step.run_into  # noqa: SLF001

        def frame(x, initial):
            return frame_call(x, initial, outputs, run)

        self._frame_fn = frame
        return frame
