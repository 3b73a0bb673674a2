"""The aarch64 layer kernel's spin barrier: release/acquire fences in the generated assembly, and a many-thread
stress run under qemu-aarch64.

qemu-user runs the emulated threads on the host's x86 memory model, which is stronger than ARMv8's: a missing
fence would pass under emulation. So the ordering is checked where it is decided, in the cross-compiled
assembly (``dmb ish`` before each flag store, after each wait), and the emulated run checks the rest
(progress and results with 4 and 8 threads on a 2-core host, more threads than parts).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import qemu_kit, run_emulated, tolerance

from tvm_gru import targets
from tvm_gru.build.sequence import compile_sequence_module, scheduled_sequence, sequence_rule
from tvm_gru.ops.config import GRUConfig
from tvm_gru.ops.reference import keras_rnn
from tvm_gru.ops.sequence import SequenceSpec
from tvm_gru.schedules.sequence_rules import SequenceSchedule

A72 = {"name": "aarch64", "mcpu": "cortex-a72", "num-cores": 4}
MEMORY = re.compile(r"^(ldr|ldp|ldur|ld1|str|stp|stur|st1)\b")
STACK = re.compile(r"^ld[rp]\s+.*\[sp(, #\d+)?\]$")  # reloads of spilled registers: the thread's own memory


def layer_asm(units=64, input_dim=16, batch=1, reset_after=False, target=A72, **knobs) -> str:
    """Assembly of the sequence kernel, four parts unless ``knobs`` say otherwise."""
    target = targets.resolve(target)
    spec = SequenceSpec(GRUConfig(units, reset_after=reset_after), batch=batch, input_dim=input_dim,
                        lanes=targets.lanes(target, "float32"))
    sched = SequenceSchedule(**{"threads": 4, "unit_blocks": 2, "candidate_blocks": 4, **knobs})
    return compile_sequence_module(scheduled_sequence(spec, target, sched), target).mod.inspect_source("asm")


def instructions(asm: str) -> list:
    """(index, text) of each instruction or label, comments and directives dropped."""
    out = []
    for line in asm.splitlines():
        text = line.split("//")[0].strip()
        if text and not text.startswith("."):
            out.append(text)
        elif re.match(r"^\.L\w+:", text):
            out.append(text)
    return out


def poll_loops(code: list) -> list:
    """(first, last) indices of the innermost loops that contain a ``yield``: the barrier's waits."""
    labels = {t[:-1]: i for i, t in enumerate(code) if t.endswith(":")}
    loops = []
    for i, t in enumerate(code):
        m = re.match(r"^(?:b\.\w+|cbz|cbnz|tbz|tbnz|b)\s+(?:.*,\s*)?(\.L\w+)$", t)
        if m and labels.get(m.group(1), i) < i and any(c == "yield" for c in code[labels[m.group(1)]:i]):
            loops.append((labels[m.group(1)], i))
    return [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]


def exit_path(code: list, last: int, limit: int = 60) -> tuple:
    """Follow the fall-through and unconditional branches from the back edge at ``last`` to the first
    ``dmb ish``: its index and the memory accesses on the way."""
    labels = {t[:-1]: i for i, t in enumerate(code) if t.endswith(":")}
    i, seen = last + 1, []
    for _ in range(limit):
        t = code[i]
        if re.match(r"^dmb\s+ish$", t):
            return i, seen
        if MEMORY.match(t):
            seen.append(t)
        m = re.match(r"^b\s+(\.L\w+)$", t)
        i = labels[m.group(1)] if m else i + 1
    raise AssertionError(f"no dmb ish within {limit} instructions after the wait ending at {last}: {seen}")


def wait_ends(loops: list) -> list:
    """The last poll loop of each wait (a wait polls every part's flag in consecutive loops)."""
    return [last for (_, last), (nxt, _) in zip(loops, [*loops[1:], (None, None)]) if nxt is None or nxt > last + 8]


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
def test_layer_kernel_has_no_runtime_barrier(reset_after):
    asm = layer_asm(reset_after=reset_after)
    assert "__TVMBackendParallelBarrier" not in asm
    assert "TVMBackendParallelLaunch" in asm  # still one parallel launch per call
    assert "mfence" not in asm and "pause" not in asm


def test_rule_picks_the_spin_barrier_on_aarch64():
    target = targets.resolve(A72)
    spec = SequenceSpec(GRUConfig(256), batch=1, input_dim=256, lanes=4)
    sched = sequence_rule(target).default_schedule(spec, target)
    assert sched.threads == 4 and sched.spin_barrier
    asm = compile_sequence_module(scheduled_sequence(spec, target, sched), target).mod.inspect_source("asm")
    assert "__TVMBackendParallelBarrier" not in asm


@pytest.mark.parametrize("knobs", [{}, {"gemm_in_barrier": True}], ids=["plain", "gemm_in_barrier"])
def test_release_before_every_flag_store_and_acquire_after_every_wait(knobs):
    code = instructions(layer_asm(**knobs))
    loops = poll_loops(code)
    assert loops, "no spin-wait loop (yield) in the kernel"
    for first, last in loops:
        body = code[first:last + 1]
        # the flag is loaded again on every poll (a hoisted load would spin forever), as a 32-bit load
        assert any(re.match(r"^ldr\s+w\d+, \[x\d+(, #\d+)?\]$", t) for t in body), body
        assert "bl\tsched_yield" in body or any(t.startswith("bl") and "sched_yield" in t for t in body), body
    # acquire: on the way out of a wait's last poll loop, a `dmb ish` comes before any access but flag polls
    # and the thread's own stack
    acquire = set()
    for last in wait_ends(loops):
        fence, seen = exit_path(code, last)
        assert all(re.match(r"^ldr\s+w\d+, \[x\d+(, #\d+)?\]$", t) or STACK.match(t) for t in seen), seen
        acquire.add(fence)
    # release: every other `dmb ish` is followed, before any other memory access, by the part's flag store
    fences = [i for i, t in enumerate(code) if re.match(r"^dmb\s+ish$", t)]
    releases = [i for i in fences if i not in acquire]
    assert releases and acquire
    for i in releases:
        first_access = next(t for t in code[i + 1:] if MEMORY.match(t) and not STACK.match(t))
        assert re.match(r"^str\s+w\d+, \[x\d+(, #\d+)?\]$", first_access), (code[i:i + 6], first_access)


def test_x86_kernel_keeps_its_own_barrier():
    asm = layer_asm(target={"name": "x86", "mcpu": "znver3", "num-cores": 4})
    assert "mfence" in asm and "pause" in asm and "__TVMBackendParallelBarrier" not in asm


# Runs inside the emulated arm64 Python: many calls of each layer on the thread count given on its command line.
EMULATED = r"""
import json, os, sys
os.environ["TVM_NUM_THREADS"] = sys.argv[3]  # before the runtime starts its pool
cases = json.load(open(sys.argv[1]))
sys.path.insert(0, cases[0]["artifact"] + "/python/tvm_gru_runtime.zip")
import numpy as np
import tvm_gru_runtime
results = {}
for case in cases:
    layer = tvm_gru_runtime.load(case["artifact"])
    data = np.load(case["inputs"])
    for key in case["calls"]:
        results[f"{case['name']}/{key}"] = layer(data[key])
np.savez(sys.argv[2], **results)
"""

STRESS = {"v1_default": {}, "reset_after": {"reset_after": True, "recurrent_activation": "sigmoid"}}


@pytest.fixture(scope="module")
def stress_layers(tmp_path_factory):
    import tvm_gru  # noqa: PLC0415

    kit = qemu_kit()
    root = tmp_path_factory.mktemp("arm_barrier")
    rng = np.random.default_rng(7)
    cases, expected = [], {}
    for i, (name, kwargs) in enumerate(STRESS.items()):
        layer = tvm_gru.GRU(128, return_sequences=True, seed=i, **kwargs)  # 4 parts on a 4-core target
        shapes = [(64, 384), (128, 384), layer.cell.config.bias_shape]
        layer.set_weights([rng.uniform(-0.15, 0.15, s).astype("float32") for s in shapes])
        art = layer.export(root / name, target=A72, batch=(1, 3))
        assert b"__TVMBackendParallelBarrier" not in (art / "kernel.so").read_bytes()
        inputs = {f"x{j}": rng.uniform(-1, 1, (1 + 2 * (j % 2), 40 + j, 64)).astype("float32") for j in range(12)}
        np.savez(root / f"{name}.npz", **inputs)
        cases.append({"name": name, "artifact": str(art), "inputs": str(root / f"{name}.npz"), "calls": list(inputs)})
        for key, x in inputs.items():
            xs = x.astype(np.float64).transpose(1, 0, 2)
            outs, _ = keras_rnn(layer.cell.config, xs, np.zeros((x.shape[0], 128)), *layer.get_weights())
            expected[f"{name}/{key}"] = outs.transpose(1, 0, 2)
    return kit, root, cases, expected


@pytest.mark.parametrize("threads", [4, 8])
def test_many_threads_under_emulation(stress_layers, threads):
    kit, root, cases, expected = stress_layers
    results = run_emulated(kit, root, EMULATED, cases, str(threads))
    assert sorted(results) == sorted(expected)
    for key, want in expected.items():
        err = float(np.max(np.abs(results[key] - want)))
        assert err <= tolerance("float32", want), f"{key} with {threads} threads: max err {err:.3e}"
