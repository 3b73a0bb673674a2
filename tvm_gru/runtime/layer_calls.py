"""The Keras GRU layer's call conventions, shared by the in-process layer and the deployed one.

:class:`tvm_gru.GRU` (compiles its kernels) and :class:`~.deployed_layer.DeployedGRU` (loads them from an
artifact) run the same sequence kernel behind the same Keras API: ``[inputs, initial_state]`` lists, initial
and stateful states, masks, empty calls, output shapes. That API lives here once. This module is part of the
bundled runtime: it imports numpy only.

A class using :class:`SequenceLayerCalls` provides ``units``, ``dtype``, ``name``, ``time_major``,
``stateful``, ``return_sequences``, ``return_state``, ``_states`` (None or the two (B, H) state buffers: the
current one first), ``_lock`` (a ``threading.Lock`` that every read-compute-write of ``_states`` holds: see
:class:`SequenceLayerCalls`) and ``_array(name, value)`` (a host numpy view of an array or DLPack tensor, or a
``TypeError`` naming ``name``); it may override ``_check_batch(batch)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SequenceLayerCalls", "INDEX_LIMIT", "max_steps", "check_steps", "kernel_view", "split_inputs",
           "check_training", "check_inference_training", "NotCopyable"]

# What SequenceLayerCalls._plain_initial returns for an initial state the fast paths do not take.
NOT_PLAIN = object()

# Compiled kernels index their buffers with 32-bit integers (TE shapes and the sequence length are int32).
INDEX_LIMIT = 2**31 - 1


def max_steps(batch: int, input_dim: int, units: int) -> int:
    """The most time steps one sequence-kernel call takes: its per-call buffers (inputs, input projections of
    3 * padded units, outputs) grow with the step count and are indexed with 32-bit integers."""
    padded = -(-units // 8) * 8  # units padded to whole SIMD blocks (V <= 8)
    return INDEX_LIMIT // max(1, batch * max(input_dim, 3 * padded))


def check_steps(steps: int, batch: int, input_dim: int, units: int) -> None:
    """Refuse a call longer than :func:`max_steps`, naming ``inputs`` and what to do instead."""
    limit = max_steps(batch, input_dim, units)
    if steps > limit:
        raise ValueError(f"`inputs` has {steps:,} time steps; at batch {batch} one call takes at most {limit:,} "
                         "(compiled kernels index with 32-bit integers): split the sequence and feed the chunks to "
                         "a stateful layer, or pass each chunk's last state as the next chunk's initial_state")


def kernel_view(array: np.ndarray, dtype) -> np.ndarray:
    """``array`` C-contiguous, of ``dtype`` and writeable (DLPack refuses read-only arrays): no copy if it is."""
    out = np.ascontiguousarray(array, dtype=dtype)
    return out if out.flags.writeable else out.copy()


def check_training(training):
    """``training`` as None or a bool: Python/numpy bools, 0/1 and None; anything else is refused.

    The one check of the ``training`` argument, for the in-process cell and layer and the deployed ones.
    """
    if training is None or isinstance(training, (bool, np.bool_)):
        return None if training is None else bool(training)
    if isinstance(training, (int, np.integer)) and training in (0, 1):
        return bool(training)
    raise TypeError(f"`training` must be None, True or False; received {training!r} of type "
                    f"{type(training).__name__}")


def check_inference_training(training, config: dict, what: str, trainer: str):
    """``training`` of a deployed (inference-only) cell or layer, checked by :func:`check_training`.

    ``training=True`` with ``dropout`` or ``recurrent_dropout`` > 0 in ``config`` raises ``ValueError``: Keras
    would apply dropout, the artifact has no dropout kernels, and the no-dropout numbers would silently not be
    what was asked for. With both rates 0, ``training`` changes nothing, as in Keras. ``what`` names the object
    ("cell", "GRU layer"), ``trainer`` the in-process class to train with.
    """
    training = check_training(training)
    dropout, recurrent = config.get("dropout", 0.0), config.get("recurrent_dropout", 0.0)
    if training and (dropout > 0 or recurrent > 0):
        raise ValueError(f"`training`=True: this deployed {what} is inference-only: it was exported with dropout="
                         f"{dropout}, recurrent_dropout={recurrent}, which apply only in training, and the artifact "
                         f"has no dropout kernels. Call it with training=False or None (the Keras inference "
                         f"result), or train with {trainer}")
    return training


class NotCopyable:
    """Deployed cells and layers refuse ``pickle``, ``copy.copy`` and ``copy.deepcopy`` with a ``TypeError``.

    They hold a native library opened from a folder that :func:`~.artifact.load` verified. A pickle could only
    name that folder, whose contents may differ (or be missing) wherever and whenever it is unpickled; a copy
    would share the library. Loading the folder again is the explicit, verified way to get another one.
    """

    def __reduce_ex__(self, protocol):
        name = type(self).__name__
        raise TypeError(f"a {name} cannot be pickled or copied: it holds the native kernels loaded from a "
                        f"verified artifact folder. Pass the artifact's path instead and call tvm_gru.load(path) "
                        f"(it verifies the folder again) where you need a {name}; each load is independent "
                        f"(its own state, for a stateful layer)")


def split_inputs(inputs, initial_state):
    """Keras accepts ``[inputs, *initial_states]``: return ``(inputs, initial_state)``."""
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise ValueError("`inputs` is an empty list")
        if len(inputs) > 1:
            if initial_state is not None:
                raise ValueError("initial states given twice: in `inputs` and as `initial_state`")
            initial_state = list(inputs[1:])
        inputs = inputs[0]
    return inputs, initial_state


class SequenceLayerCalls:
    """Keras GRU layer state handling and argument checks (see the module docstring for what it needs).

    A stateful layer may be shared between threads: each call reads the carried state, runs the kernel and
    swaps in the new state while holding ``_lock``, as do :meth:`reset_states` and :attr:`states`, so
    concurrent calls run one after the other (in an order the threads do not control) and no update is lost.
    Calls of a layer that is not stateful take no lock: they share nothing a caller sees.
    """

    def _check_batch(self, batch: int) -> None:
        """Refuse a batch size the layer cannot run (the deployed layer has kernels for a fixed list)."""

    @property
    def _layout(self) -> str:
        return "(time, batch, input_dim)" if self.time_major else "(batch, time, input_dim)"

    def _batch_of(self, shape) -> int:
        return shape[1] if self.time_major else shape[0]

    # ------------------------------------------------------------------ states
    @property
    def states(self) -> list:
        """Stateful layers: ``[state (B, H)]`` (a copy) once the batch size is known; otherwise ``[None]``."""
        with self._lock:  # not a buffer a concurrent call is swapping or writing
            return [None] if self._states is None else [self._states[0].copy()]

    def get_initial_state(self, inputs) -> np.ndarray:
        """Zeros (batch, units) for ``inputs`` of shape (batch, time, input_dim) (time-major: (time, batch, ...))."""
        x = self._array("inputs", inputs)
        if x.ndim != 3:
            raise ValueError(f"`inputs` must have rank 3 {self._layout}; received shape {x.shape}")
        return np.zeros((self._batch_of(x.shape), self.units), self.dtype)

    def reset_states(self, states=None) -> None:
        """Zero the state of a stateful layer, or set it to ``states`` (a (B, H) array or a list of one)."""
        if not self.stateful:
            raise AttributeError("Layer must be stateful.")
        with self._lock:  # not between a concurrent call's read of the state and its write
            self._reset_states(states)

    def _reset_states(self, states) -> None:
        if states is None:
            if self._states is not None:
                for s in self._states:
                    s[...] = 0
            return
        if isinstance(states, (list, tuple)):
            if len(states) != 1:
                raise ValueError(f"Layer {self.name} expects 1 state, but it received {len(states)} state values.")
            states = states[0]
        value = self._array("states", states)
        if value.dtype.kind not in "iuf":
            raise TypeError(f"`states` must hold real numbers (cast to {self.dtype}); received dtype {value.dtype}")
        if value.ndim != 2:
            raise ValueError(f"`states` must have shape (batch, {self.units}); received {value.shape}")
        batch = self._states[0].shape[0] if self._states is not None else value.shape[0]
        if value.shape != (batch, self.units):
            raise ValueError(f"State 0 (`states`) is incompatible with layer {self.name}: expected shape "
                             f"{(batch, self.units)} but found {value.shape}")
        self._check_batch(batch)
        if self._states is None:
            self._states = [np.zeros(value.shape, self.dtype) for _ in range(2)]
        self._states[0][...] = value

    def compute_output_shape(self, input_shape) -> list | tuple:
        """The Keras output shape(s) for an input shape of rank 3."""
        try:
            shape = tuple(input_shape)
        except TypeError as err:
            raise TypeError(f"`input_shape` must be a shape tuple of rank 3; received {input_shape!r}") from err
        if len(shape) != 3:
            raise ValueError(f"`input_shape` must have rank 3 {self._layout}; received {shape}")
        batch, steps = (shape[1], shape[0]) if self.time_major else (shape[0], shape[1])
        if self.return_sequences:
            out = (steps, batch, self.units) if self.time_major else (batch, steps, self.units)
        else:
            out = (batch, self.units)
        return [out, (batch, self.units)] if self.return_state else out

    # ------------------------------------------------------------------ streaming
    @property
    def _streams_frames(self) -> bool:
        """Whether calls take the spelled-out streaming path: stateful, last output only, no extras to compute."""
        return (self.stateful and not self.return_sequences and not self.return_state
                and getattr(self, "activity_regularizer", None) is None)

    @staticmethod
    def _plain_initial(initial_state):
        """``initial_state`` as the fast paths take it: None or a numpy array (a list or tuple of one is
        unwrapped); :data:`NOT_PLAIN` for anything else (the checked path converts or explains it)."""
        if type(initial_state) is list or type(initial_state) is tuple:
            initial_state = initial_state[0] if len(initial_state) == 1 else NOT_PLAIN
        if initial_state is None or type(initial_state) is np.ndarray:
            return initial_state
        return NOT_PLAIN

    def _stream_call(self, x, initial, outputs, kernel, wargs):
        """One streaming call on arguments the kernel's binder checks (raises TypeError/ValueError/BufferError
        before running when they do not match; nothing has changed then).

        ``x``: (B, T, I) (time-major: (T, B, I)) numpy array of the kernel dtype; ``initial``: None (the carried
        state) or a (B, H) array; ``outputs``: the batch's :class:`~.ffi_args.SequenceOutputs`. The caller has
        checked that the layer holds a state for this batch. Returns the last output (B, H).
        """
        states = self._states
        h0, state_t = outputs.state_pair(states)
        out, out_t = outputs.last.take()
        kernel(x, h0 if initial is None else initial, *wargs, out_t, state_t, int(self.go_backwards))
        states.reverse()  # the new state, written into the spare buffer, becomes current
        return out

    def _frame_call(self, x, initial, outputs, step):
        """One streamed frame through a step kernel, where that is the faster single step (see
        ``CPUSequenceRule.frames_on_step_kernel``); arguments and errors as :meth:`_stream_call`.

        ``x``: (B, 1, I) (time-major (1, B, I)); ``step(x (B, I), h, out)`` runs the kernel with its weights. It
        writes the new state into the spare state buffer; the caller gets a pooled copy (which it may keep or
        change).
        """
        states = self._states
        h0, state_t = outputs.state_pair(states)
        step(x.reshape(states[0].shape[0], -1), h0 if initial is None else initial, state_t)
        out = outputs.last.take()[0]
        np.copyto(out, states[1])
        states.reverse()
        return out

    # ------------------------------------------------------------------ call arguments
    _split_inputs = staticmethod(split_inputs)

    def _sequence_input(self, inputs, input_dim: int) -> np.ndarray:
        """``inputs`` as a rank-3 float array with ``input_dim`` features, checked (not yet converted)."""
        x = self._array("inputs", inputs)
        if x.ndim != 3:
            raise ValueError(f"`inputs` must have rank 3 {self._layout}; received shape {x.shape}")
        if x.dtype.kind != "f":
            raise TypeError(f"`inputs` must hold floating point values; received dtype {x.dtype}")
        if x.shape[2] != input_dim:
            raise ValueError(f"`inputs` must have {input_dim} features (the layer was built for input_dim="
                             f"{input_dim}); received shape {x.shape}")
        batch, steps = (x.shape[1], x.shape[0]) if self.time_major else (x.shape[0], x.shape[1])
        check_steps(steps, batch, input_dim, self.units)  # before any copy of a huge input
        return x

    def _initial_state(self, initial_state, batch):
        """The (B, H) initial state of a call: ``initial_state``, a stateful layer's state, or None (zeros)."""
        if self.stateful:
            if self._states is None:
                self._states = [np.zeros((batch, self.units), self.dtype) for _ in range(2)]
            elif self._states[0].shape[0] != batch:
                raise ValueError(f"Layer {self.name} is stateful with batch size {self._states[0].shape[0]}; "
                                 f"received inputs with batch size {batch} (call reset_states or use a new layer)")
        if initial_state is not None:
            if isinstance(initial_state, (list, tuple)):
                if len(initial_state) != 1:
                    raise ValueError(f"Layer {self.name} expects 1 initial state, received {len(initial_state)}")
                initial_state = initial_state[0]
            h0 = self._array("initial_state", initial_state)
            if h0.shape != (batch, self.units):
                raise ValueError(f"`initial_state` must have shape {(batch, self.units)}; received {h0.shape}")
            if h0.dtype.kind != "f":
                raise TypeError(f"`initial_state` must hold floating point values; received dtype {h0.dtype}")
            return kernel_view(h0, self.dtype)
        return self._states[0] if self.stateful else None

    def _mask(self, mask, leading):
        """``mask`` of shape ``leading`` ((B, T), time-major (T, B)) as the kernel's uint8 (1 = a real step)."""
        valid = self._array("mask", mask)
        if valid.dtype.kind not in "biuf":
            raise TypeError(f"`mask` must hold bools (or 0/1 numbers); received dtype {valid.dtype}")
        if valid.dtype.kind == "f" and np.isnan(valid).any():
            raise ValueError("`mask` holds NaN, which is neither a valid nor a padding step; expected bools")
        if valid.shape != tuple(leading):
            layout = "(time, batch)" if self.time_major else "(batch, time)"
            raise ValueError(f"`mask` must have shape {layout} = {tuple(leading)}; received {valid.shape}")
        if valid.dtype == np.bool_ and valid.flags.c_contiguous and valid.flags.writeable:
            return valid.view(np.uint8)
        return np.ascontiguousarray(valid != 0, dtype=np.uint8)

    def _empty_call(self, shape, h0):
        """The Keras result of a call with no batch rows or no steps (zeros; the initial state as the state)."""
        batch = self._batch_of(shape)
        if self.return_sequences:
            out = np.zeros((shape[0], shape[1], self.units), self.dtype)
        else:
            out = np.zeros((batch, self.units), self.dtype)
        state = np.zeros((batch, self.units), self.dtype) if h0 is None else np.array(h0)
        return [out, state] if self.return_state else out
