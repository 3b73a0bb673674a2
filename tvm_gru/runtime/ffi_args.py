"""Kernel arguments without a DLPack export per call: pooled outputs and tensors wrapped once.

Handing a numpy array to a TVM FFI function exports it through DLPack on every call, which costs more than a
small GRU step. A stateful streaming call would otherwise export four arrays per frame (input,
state in, output, state out). Everything the runtime owns is therefore wrapped once:

- :class:`OutputPool` hands out output arrays with their FFI tensors. An array is reused only when nobody but
  the pool references it any more: Keras returns a new tensor per call and users keep old outputs, so an
  array the caller still holds (or a view of it) is never overwritten.
- :class:`TensorCache` keeps the FFI tensor of long-lived runtime buffers (zero state, a stateful layer's two
  state buffers).
"""

from __future__ import annotations

import sys

import numpy as np
import tvm_ffi

__all__ = ["OutputPool", "TensorCache", "SequenceOutputs"]

_refcount = sys.getrefcount


class OutputPool:
    """A few output arrays of one shape, each with its FFI tensor, reused once the caller dropped them.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype or str
    size : int
        Arrays kept; when all are held by callers a new one replaces the oldest (which stays valid for them).
    """

    def __init__(self, shape, dtype, size: int = 4):
        self.shape, self.dtype, self.size = tuple(shape), np.dtype(dtype), size
        self._pool = []  # (array, its FFI tensor), oldest first
        self._wrapped = {}  # id(array) -> FFI tensor, for the arrays in the pool
        probe = np.empty(0, self.dtype)
        self._pool.append((probe, tvm_ffi.from_dlpack(probe)))  # the tensor holds a reference to its array too
        del probe
        self._free = self._refs_in_take()  # what take() sees for an array only the pool holds
        self._pool.clear()

    def _refs_in_take(self) -> int:
        for out, _ in self._pool:  # the same frame shape as take(): loop variable + list entry + argument
            return _refcount(out)
        return 0

    def take(self):
        """``(array, tensor)``: an output buffer nobody outside the pool can see (contents undefined)."""
        for out, out_t in self._pool:
            if _refcount(out) == self._free:
                return out, out_t
        out = np.empty(self.shape, self.dtype)
        entry = (out, tvm_ffi.from_dlpack(out))
        # Callers in other threads may take and evict at the same time (no lock: the cell and a layer that is
        # not stateful are shared as they are): register the entry before another eviction can reach it, and
        # let each take evict at most one entry (held while its wrapper is dropped, so its id is not reused).
        self._wrapped[id(out)] = entry[1]
        self._pool.append(entry)
        if len(self._pool) > self.size:
            try:
                evicted = self._pool.pop(0)
            except IndexError:  # other threads' evictions emptied the pool meanwhile
                return entry
            self._wrapped.pop(id(evicted[0]), None)
        return entry

    def tensor_of(self, array, default=None):
        """The FFI tensor of ``array`` if it is one of the pool's arrays (e.g. a state passed back in)."""
        return self._wrapped.get(id(array), default)

    def bind(self, fn, args):
        """``run(x, h)``: ``fn(x, h, *args, out)`` into an output from this pool, which it returns.

        The same as :meth:`take`, :meth:`tensor_of` and the call, with everything looked up once: the method
        calls and attribute lookups were a sizeable share of a small Keras call. The loop is :meth:`take`'s, so
        ``_free`` holds for it; the pool's list and dict are updated in place, so the closure sees new entries.
        """
        entries, free, take, wrapped, refcount = self._pool, self._free, self.take, self._wrapped.get, _refcount

        def run(x, h):
            for out, out_t in entries:
                if refcount(out) == free:
                    break
            else:
                out, out_t = take()
            fn(x, wrapped(id(h), h), *args, out_t)
            return out

        return run


class TensorCache:
    """FFI tensors of arrays that live as long as their owner (wrapped on first use, kept with the array)."""

    def __init__(self):
        self._entries = {}  # id(array) -> (array, tensor); holding the array keeps its id unique

    def __call__(self, array: np.ndarray):
        entry = self._entries.get(id(array))
        if entry is None:
            entry = self._entries[id(array)] = (array, tvm_ffi.from_dlpack(array))
        return entry[1]


class SequenceOutputs:
    """Output buffers of the sequence kernel's calls for one batch size, with their FFI tensors.

    The kernel writes ``[sequence (B, T, H) or (T, B, H)]``, ``last`` (B, H) and ``state`` (B, H). What the
    caller gets back comes from pools; what it does not see (``last`` when sequences are returned, ``state``
    of a plain call) goes to reused scratch; a stateful layer's new state goes to its spare state buffer.

    Parameters
    ----------
    batch, units : int
    dtype : numpy dtype
    return_sequences, time_major, return_state : bool
        The layer's options.
    short_steps : int
        Sequence outputs of calls up to this many steps are pooled (streaming); longer ones are allocated
        (their export is paid once for many steps).
    """

    def __init__(self, batch, units, dtype, return_sequences, time_major, return_state, short_steps=16):
        self.shape = (batch, units)
        self.dtype = np.dtype(dtype)
        self.return_sequences, self.time_major, self.return_state = return_sequences, time_major, return_state
        self.short_steps = short_steps
        self.last = OutputPool(self.shape, self.dtype)
        self.state = OutputPool(self.shape, self.dtype) if return_state else None
        self.seq = {}  # steps -> OutputPool
        self.tensors = TensorCache()
        self.zeros = np.zeros(self.shape, self.dtype)
        self.scratch = (np.empty(self.shape, self.dtype), np.empty(self.shape, self.dtype))
        self.zeros_t = self.tensors(self.zeros)
        self.scratch_t = tuple(self.tensors(a) for a in self.scratch)
        self._pairs = {}  # id(state buffer) -> (its tensor, the other buffer's tensor)

    def _seq(self, steps):
        shape = (steps, *self.shape) if self.time_major else (self.shape[0], steps, self.shape[1])
        if steps > self.short_steps:
            out = np.empty(shape, self.dtype)
            return out, out
        pool = self.seq.get(steps)
        if pool is None:
            pool = self.seq[steps] = OutputPool(shape, self.dtype)
        return pool.take()

    def state_pair(self, states):
        """``(current tensor, spare tensor)`` of a stateful layer's two state buffers ``[current, spare]``."""
        pair = self._pairs.get(id(states[0]))
        if pair is None:
            current, spare = (self.tensors(a) for a in states)
            self._pairs[id(states[0])], self._pairs[id(states[1])] = (current, spare), (spare, current)
            pair = self._pairs[id(states[0])]
        return pair

    def take(self, steps, states=None):
        """``(arrays, h0, tensors)`` of a call of ``steps`` steps.

        ``arrays`` = (sequence or None, last, state); ``h0`` the kernel argument of the zero or carried initial
        state; ``tensors`` the kernel's output arguments. ``states``: a stateful layer's ``[current, spare]``
        buffers (the new state goes to the spare one).
        """
        if self.return_sequences:
            seq, seq_t = self._seq(steps)
            last, last_t = self.scratch[0], self.scratch_t[0]
        else:
            seq = seq_t = None
            last, last_t = self.last.take()
        if states is not None:
            h0, state_t = self.state_pair(states)
            state = states[1]
        else:
            h0 = self.zeros_t
            state, state_t = self.state.take() if self.state is not None else (self.scratch[1], self.scratch_t[1])
        tensors = (last_t, state_t) if seq is None else (seq_t, last_t, state_t)
        return (seq, last, state), h0, tensors
