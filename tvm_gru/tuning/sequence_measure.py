"""Building, checking and timing whole-sequence kernel candidates, here or on a TVM RPC server.

Every candidate is compiled on this machine; it runs in this process (:class:`SequenceBench` without a tracker) or
on a server registered with a TVM RPC tracker, to which it is uploaded as a shared library (cross-linked for
aarch64, as the step tuner's candidates are). Before it is timed, its outputs for the timed inputs (random
weights, ``steps`` steps) are compared with the float64 numpy reference; a candidate with wrong numbers is a
failure, never a result.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import numpy as np

from .measure import parse_tracker, wait_for_quiet

__all__ = ["SequenceBench", "TIMING"]

log = logging.getLogger(__name__)

# A candidate's time is the fastest of many single calls (about TIMING["budget_s"] of them, at least
# TIMING["calls"][0], at most [1]). On a shared machine other processes take a core for milliseconds at a time; a
# parallel kernel that loses a core stalls at its next barrier, so the mean of a window of calls says more about
# the neighbours than about the kernel (seen here, 1x64x128 x 100 steps on two threads: 500 to 3,200 us by
# 40 ms windows at load 3.7, 160 us quiet), while the fastest single call is one that ran undisturbed.
TIMING = {"budget_s": 0.3, "calls": (10, 400)}


class SequenceBench:
    """The inputs, the reference outputs and the runner of one sequence tuning run.

    Parameters
    ----------
    spec : SequenceSpec
        The workload (unmasked, without dropout masks).
    target : tvm.target.Target
    steps : int
        T of the timed (and checked) calls.
    rpc_tracker, rpc_key : str, optional
        Time on a server of this tracker and key instead of in this process.
    wait_quiet_s : float
        Local runs: before each timing, wait up to this long for the CPUs to be mostly idle.
    """

    def __init__(self, spec, target, steps: int, rpc_tracker=None, rpc_key=None, wait_quiet_s: float = 0.0,
                 seed: int = 0):
        import tvm  # noqa: PLC0415

        from ..ops.reference import keras_rnn  # noqa: PLC0415
        from ..ops.sequence import pack_sequence_weights  # noqa: PLC0415
        from ..runtime.packing import computed_matrices  # noqa: PLC0415
        from ..targets import family, resolve  # noqa: PLC0415

        if spec.masked or spec.input_masks or spec.recurrent_masks:
            raise ValueError(f"`spec` must be unmasked, without dropout masks, received {spec.key()}")
        self.tvm, self.spec, self.target, self.steps = tvm, spec, target, steps
        foreign = target.kind.name == "llvm" and family(target) != family(resolve(None))
        if foreign and rpc_tracker is None:
            raise ValueError(f"target {target.export()} cannot run on this host: tune it through an RPC tracker "
                             "(rpc_tracker=HOST:PORT, rpc_key=KEY) with a server on such a machine")
        self.aarch64 = foreign and family(target) == "aarch64"
        self.wait_quiet_s = wait_quiet_s if rpc_tracker is None else 0.0
        cfg, rng = spec.config, np.random.default_rng(seed)
        b, i, h, dt = spec.batch, spec.input_dim, cfg.units, cfg.dtype
        scale = 1.0 / np.sqrt(i + h)
        kernel = rng.uniform(-2 * scale, 2 * scale, (i, 3 * h)).astype(dt)
        recurrent = rng.uniform(-2 * scale, 2 * scale, (h, 3 * h)).astype(dt)
        bias = rng.uniform(-0.5, 0.5, cfg.bias_shape).astype(dt) if cfg.use_bias else None
        xs = rng.uniform(-1, 1, (steps, b, i)).astype(dt)
        h0 = rng.uniform(-1, 1, (b, h)).astype(dt)
        # The reference multiplies by the weights as stored (float16 rounded, int8 dequantized): a candidate is
        # checked for computing its kernel's math, not for the storage's error (documented and tested apart).
        ref_k, ref_r = computed_matrices(cfg, kernel, recurrent, spec.weight_dtype)
        outs, state = keras_rnn(cfg, xs, h0, ref_k, ref_r, bias)
        self.expected = [outs[-1], state] if not spec.return_sequences else [
            outs if spec.time_major else outs.transpose(1, 0, 2), outs[-1], state]
        x = xs if spec.time_major else np.ascontiguousarray(xs.transpose(1, 0, 2))
        self.inputs = [x, h0, *pack_sequence_weights(cfg, kernel, recurrent, bias, spec.lanes,
                                                     weight_dtype=spec.weight_dtype).values()]
        self.outputs = [np.zeros(e.shape, dt) for e in self.expected]
        scale = max(1.0, max(float(np.max(np.abs(e))) for e in self.expected))
        self.atol = (1e-4 if dt == "float32" else 1e-9) * scale
        self.tmp = tempfile.mkdtemp(prefix="tvm_gru_seq_tune_")
        self.count = 0
        if rpc_tracker is None:
            self.session, self.dev, self.where = None, tvm.cpu(0), "local"
        else:
            from tvm import rpc  # noqa: PLC0415

            host, port = parse_tracker(rpc_tracker)
            self.session = rpc.connect_tracker(host, port).request(rpc_key, priority=1, session_timeout=0)
            self.dev, self.where = self.session.cpu(0), f"rpc {host}:{port} key={rpc_key}"

    def build(self, schedule):
        """The candidate for ``schedule``, compiled and loaded where it runs (ValueError, TVMError on failure)."""
        from ..build.sequence import compile_sequence_module, scheduled_sequence  # noqa: PLC0415

        executable = compile_sequence_module(scheduled_sequence(self.spec, self.target, schedule), self.target)
        if self.session is None:
            return executable.jit()
        self.count += 1
        name = f"seq_candidate_{os.getpid()}_{self.count}.so"
        path = os.path.join(self.tmp, name)
        if self.aarch64:
            from tvm.support import cc  # noqa: PLC0415

            executable.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
        else:
            executable.export_library(path)
        self.session.upload(path, target=name)
        os.remove(path)
        return self.session.load_module(name)

    def check(self, module) -> str | None:
        """Run ``module`` once on the inputs: None when its outputs match the reference, else why not."""
        tvm = self.tvm
        args = [tvm.runtime.tensor(a, self.dev) for a in self.inputs + self.outputs]
        for a in args[len(self.inputs):]:
            a.copyfrom(np.full(a.shape, np.nan, a.dtype))
        module["main"](*args, 0)
        got = [a.numpy() for a in args[len(self.inputs):]]
        errors = [float(np.max(np.abs(g - e))) if np.all(np.isfinite(g)) else float("inf")
                  for g, e in zip(got, self.expected)]
        worst = max(errors)
        if not worst <= self.atol:
            return f"wrong outputs: max error {worst:.3g} > {self.atol:.3g}"
        self.args = args
        return None

    def time(self, module) -> float:
        """Seconds of the fastest of many single calls of ``module`` (:data:`TIMING`); call :meth:`check` first."""
        if self.wait_quiet_s:
            wait_for_quiet(self.wait_quiet_s)
        probe = min(module.time_evaluator("main", self.dev, number=1, repeat=3)(*self.args, 0).results)
        low, high = TIMING["calls"]
        calls = int(min(high, max(low, TIMING["budget_s"] / max(probe, 1e-7))))
        timer = module.time_evaluator("main", self.dev, number=1, repeat=calls)
        return float(min(probe, *timer(*self.args, 0).results))

    def close(self) -> None:
        self.session = None
        shutil.rmtree(self.tmp, ignore_errors=True)
