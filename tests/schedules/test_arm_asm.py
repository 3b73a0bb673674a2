"""The aarch64 kernels' gate math has no divisions: checked in the cross-compiled assembly.

A NEON ``fdiv`` costs up to 34 cycles per vector on Cortex-A72 (llvm-mca); the aarch64 rules build tanh,
sigmoid, softsign (and the float64 exp) with a reciprocal estimate plus Newton steps instead
(:func:`tvm_gru.ops.activations.te_reciprocal_aarch64`). Their accuracy is checked by the emulated runs of
tests/deploy/test_arm_qemu*.py and tests/schedules/test_arm_barrier.py against the float64 oracle; x86
kernels keep their divisions.
"""

from __future__ import annotations

import re

import pytest
import tvm

from tvm_gru import targets
from tvm_gru.build.sequence import compile_sequence_module, scheduled_sequence
from tvm_gru.build.step import scheduled_module
from tvm_gru.build.tvm_workarounds import vectorizable_isnan
from tvm_gru.ops.config import GRUConfig, StepSpec
from tvm_gru.ops.sequence import SequenceSpec

A72 = {"name": "aarch64", "mcpu": "cortex-a72", "num-cores": 4}
FDIV = re.compile(r"^\s+fdiv\s", re.MULTILINE)
CONFIGS = {
    "v1_default": dict(),
    "sigmoid_tanh_ra": dict(recurrent_activation="sigmoid", reset_after=True),
    "softsign_sigmoid": dict(activation="softsign", recurrent_activation="sigmoid"),
    "float64_sigmoid_tanh": dict(recurrent_activation="sigmoid", dtype="float64"),
}


def step_asm(config: GRUConfig, batch: int, target) -> str:
    target = targets.resolve(target)
    spec = StepSpec(config, batch=batch, input_dim=12, lanes=targets.lanes(target, config.dtype))
    with vectorizable_isnan():
        return tvm.compile(scheduled_module(spec, target), target=target).mod.inspect_source("asm")


def layer_asm(config: GRUConfig, batch: int, target) -> str:
    target = targets.resolve(target)
    spec = SequenceSpec(config, batch=batch, input_dim=12, lanes=targets.lanes(target, config.dtype))
    return compile_sequence_module(scheduled_sequence(spec, target), target).mod.inspect_source("asm")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("kernel", [step_asm, layer_asm], ids=["step", "layer"])
def test_no_fdiv_in_aarch64_kernels(kernel, name):
    asm = kernel(GRUConfig(units=40, **CONFIGS[name]), 3, A72)
    assert not FDIV.search(asm), FDIV.findall(asm)
    assert re.search(r"^\s+frecpe\s+v\d+\.(4s|2d)", asm, re.MULTILINE)  # the vector reciprocal estimate
    assert re.search(r"^\s+frecps\s+v\d+\.(4s|2d)", asm, re.MULTILINE)


def test_no_fdiv_at_the_benchmark_shape():
    asm = layer_asm(GRUConfig(units=256), 1, A72)
    assert not FDIV.search(asm) and "__TVMBackendParallelBarrier" not in asm


def test_x86_keeps_its_divisions():
    asm = step_asm(GRUConfig(units=40), 1, {"name": "x86", "mcpu": "znver3", "num-cores": 2})
    assert re.search(r"^\s+vdivps\s", asm, re.MULTILINE) and "frecpe" not in asm
