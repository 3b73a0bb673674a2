"""What a tuning record may contain: the trace instructions, attributes, annotations and decisions that tvm_gru's
design spaces (the hand rules of schedules/ for x86, ARM and CUDA, MetaSchedule's generic CPU rules) and
MetaSchedule's postprocessors write, with their values bounded. Everything else is refused, so a record is data:
an ``Annotate`` with ``pragma_import_llvm`` (linked into the kernel as module assembly), an unknown pragma or
instruction, a string where a number belongs, is never replayed or compiled."""

from __future__ import annotations

import json
import math
import re

__all__ = ["trace_refusal", "record_refusal", "trace_json", "INSTRUCTIONS", "ANNOTATIONS", "DECISIONS",
           "CONFIG_ANNOTATION", "UNROLL_STEPS", "MAX_EXTENT", "MAX_INSTRUCTIONS"]

UNROLL_STEPS = (0, 16, 64, 512)  # the unroll depths the hand space samples (its records name one)
CONFIG_ANNOTATION = "tvm_gru.hand_config"  # the root-block annotation naming a record's hand config


MAX_EXTENT = 1 << 16  # no loop of a step kernel is longer: larger split factors and tiles are refused
MAX_INSTRUCTIONS = 4096  # the longest committed trace has ~150
MAX_INPUTS = 64
_SHOWN = 60  # characters of a refused value quoted in a warning (a payload can be long)


def _is(*allowed):
    """A value equal to one of ``allowed``, of the same type (``True`` is not ``1``)."""
    return lambda v: any(type(v) is type(a) and v == a for a in allowed)


def _int(lo: int, hi: int):
    return lambda v: type(v) is int and lo <= v <= hi


def _quoted(pattern: str):
    """A text literal as a trace writes it (``"\\"...\\""``) whose content matches ``pattern`` in full."""
    rx = re.compile(pattern)
    return lambda v: type(v) is str and len(v) >= 2 and v[0] == v[-1] == '"' and rx.fullmatch(v[1:-1]) is not None


def _text(pattern: str):
    rx = re.compile(pattern)
    return lambda v: type(v) is str and rx.fullmatch(v) is not None


def _sampled(lo: int, hi: int):
    """A variable sampled earlier in the trace (a ``v`` name), or an int in ``[lo, hi]``."""
    number = _int(lo, hi)
    return lambda v: number(v) or (type(v) is str and _RV.fullmatch(v) is not None and v[0] == "v")


def _list(item, min_len: int = 1, max_len: int = 16):
    return lambda v: type(v) is list and min_len <= len(v) <= max_len and all(map(item, v))


def _probability(v) -> bool:
    return type(v) in (int, float) and 0 <= v <= 1


_RV = re.compile(r"[blv][0-9]{1,9}")
_FLAG = _is(0, 1)
_KNOB = r"[a-z_]{1,32}=(?:[0-9]{1,6}|True|False)"

# annotation key -> check of its value. The pragma_* keys reach code generation (pragma_import_llvm and
# pragma_import_c would link or compile the text they carry); only the ones tvm_gru's spaces write are here.
ANNOTATIONS = {
    "pragma_auto_unroll_max_step": _int(0, max(UNROLL_STEPS)),
    "pragma_unroll_explicit": _FLAG,
    "pragma_parallel_launch_point": _is(1),  # schedules.base: one parallel region for both phases
    "pragma_parallel_barrier_when_finish": _is(1),
    "meta_schedule.parallel": _int(1, MAX_EXTENT),  # read by the postprocessors, then removed
    "meta_schedule.vectorize": _int(1, MAX_EXTENT),
    "meta_schedule.unroll_explicit": _sampled(0, max(UNROLL_STEPS)),
    "meta_schedule.tiling_structure": _quoted(r"[SR]{1,16}"),
    CONFIG_ANNOTATION: _quoted(rf"default|{_KNOB}(?:, {_KNOB}){{0,15}}"),  # tune_space.describe: a label only
}


def _annotation_key(v) -> bool:
    return type(v) is str and v in ANNOTATIONS


# instruction kind -> (one check per attribute, the inputs as a regex over one letter per input: b/l/v a block,
# loop or value variable that an earlier instruction output, N None, i an int, s a text literal).
INSTRUCTIONS = {
    "GetSBlock": ((_text(r"[A-Za-z_][A-Za-z0-9_.]{0,63}"), _is("main")), ""),
    "GetLoops": ((), "b"),
    "GetChildBlocks": ((), "b"),
    "GetProducers": ((), "b"),
    # attrs: preserve_unit_iters, disable_predication (1 would drop the bounds check of an imperfect split)
    "Split": ((_FLAG, _is(0)), "l[Niv]+"),
    "Fuse": ((_FLAG,), "l+"),
    "Reorder": ((), "l+"),
    "Parallel": ((), "l"),
    "Vectorize": ((), "l"),
    "Unroll": ((), "l"),
    "Bind": ((_is("blockIdx.x", "threadIdx.x", "threadIdx.y"),), "l"),  # schedules.cuda
    "ComputeAt": ((_FLAG, _is(-1)), "bl"),
    "ReverseComputeAt": ((_FLAG, _is(-1)), "bl"),
    "ComputeInline": ((), "b"),
    "DecomposeReduction": ((), "bl"),
    "SetScope": ((_int(0, 64), _is("local")), "b"),
    "Annotate": ((_annotation_key,), "[bl][ivs]"),
    "Unannotate": ((_annotation_key,), "[bl]"),
    "SampleCategorical": ((_list(_int(0, max(UNROLL_STEPS))), _list(_probability)), ""),
    "SamplePerfectTile": ((_int(1, 8), _int(1, MAX_EXTENT)), "l"),
    "SampleComputeLocation": ((), "b"),
    "EnterPostproc": ((), ""),
}

# sampling instruction kind -> check of its decision, given the instruction's attributes
DECISIONS = {
    "SampleCategorical": lambda d, attrs: type(d) is int and 0 <= d < len(attrs[0]),
    "SamplePerfectTile": lambda d, attrs: _list(_int(1, MAX_EXTENT), attrs[0], attrs[0])(d),
    "SampleComputeLocation": lambda d, attrs: _int(-2, MAX_EXTENT)(d),
}


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _letter(value, defined: set) -> str | None:
    """The input's letter for the INSTRUCTIONS regexes, or None for a value no instruction takes."""
    if type(value) is int:
        return "i"
    if type(value) is not str:
        return None
    if value == "None":
        return "N"
    if value[:1] == '"':
        return "s"
    return value[0] if value in defined else None


def _instruction_refusal(inst, defined: set) -> str | None:
    """Why one instruction ``[kind, inputs, attrs, outputs]`` is refused, or None; adds its outputs to ``defined``."""
    if not (type(inst) is list and len(inst) == 4 and type(inst[0]) is str
            and all(type(part) is list for part in inst[1:])):
        return f"{_show(inst)} is not [kind, inputs, attributes, outputs]"
    kind, inputs, attrs, outputs = inst
    if kind not in INSTRUCTIONS:
        return f"instruction kind {_show(kind)} is not one tvm_gru's search spaces use"
    checks, pattern = INSTRUCTIONS[kind]
    if len(attrs) != len(checks):
        return f"{kind} takes {len(checks)} attribute(s), received {_show(attrs)}"
    for position, (check, value) in enumerate(zip(checks, attrs)):
        if check is _annotation_key and not check(value):
            return f"annotation key {_show(value)} is not one tvm_gru's search spaces write"
        if not check(value):
            return f"{kind} attribute {position} {_show(value)} is not allowed"
    letters = [_letter(v, defined) for v in inputs]
    if None in letters:
        value = inputs[letters.index(None)]
        return (f"{kind} input {_show(value)} is neither a variable an earlier instruction output, None, an int "
                "nor a text literal")
    if len(inputs) > MAX_INPUTS or not re.fullmatch(pattern, "".join(letters)):
        return f"{kind} inputs {_show(inputs)} are not of the form {pattern!r}"
    if kind == "Annotate" and not ANNOTATIONS[attrs[0]](inputs[1]):
        return f"annotation {attrs[0]} value {_show(inputs[1])} is not allowed"
    if kind == "Split" and not all(_int(1, MAX_EXTENT)(v) for v in inputs[1:] if type(v) is int):
        return f"Split factors {_show(inputs[1:])} must be ints in [1, {MAX_EXTENT}]"
    if not all(type(o) is str and _RV.fullmatch(o) and o not in defined for o in outputs):
        return f"{kind} outputs {_show(outputs)} are not new variable names"
    defined.update(outputs)
    return None


def trace_refusal(trace) -> str | None:
    """Why the JSON trace ``[instructions, decisions]`` may not be replayed, or None when every instruction, attribute,
    annotation and decision is one :data:`INSTRUCTIONS`, :data:`ANNOTATIONS` and :data:`DECISIONS` allow."""
    if not (type(trace) is list and len(trace) == 2 and all(type(part) is list for part in trace)):
        return "the trace is not [instructions, decisions]"
    insts, decisions = trace
    if len(insts) > MAX_INSTRUCTIONS:
        return f"{len(insts)} instructions, more than {MAX_INSTRUCTIONS}"
    defined: set = set()
    for index, inst in enumerate(insts):
        reason = _instruction_refusal(inst, defined)
        if reason is not None:
            return f"instruction {index}: {reason}"
    seen = set()
    for entry in decisions:
        if not (type(entry) is list and len(entry) == 2 and type(entry[0]) is int and 0 <= entry[0] < len(insts)
                and entry[0] not in seen):
            return f"decision {_show(entry)} is not [index of an instruction, decision]"
        seen.add(entry[0])
        kind, _, attrs, _ = insts[entry[0]]
        if kind not in DECISIONS or not DECISIONS[kind](entry[1], attrs):
            return f"decision {_show(entry[1])} for instruction {entry[0]} ({kind}) is not allowed"
    return None


def record_refusal(record) -> str | None:
    """Why ``record`` (``[trace, run_secs, target, args_info]``) may not be applied, or None.

    Besides the trace (:func:`trace_refusal`), its times must be finite and positive: a record is chosen by them.
    """
    if not (type(record) is list and len(record) >= 3 and type(record[1]) is list):
        return "the record is not [trace, run_secs, target, args_info]"
    if not record[1] or not all(type(t) in (int, float) and math.isfinite(t) and t > 0 for t in record[1]):
        return f"run_secs {_show(record[1])} are not finite positive times"
    return trace_refusal(record[0])


def trace_json(trace) -> list:
    """A ``tvm.s_tir.schedule.Trace`` as the plain JSON lists a database line holds (what the checks read)."""
    import tvm  # noqa: PLC0415

    def plain(value):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
            return value.value
        if isinstance(value, (int, float)) or value is None:
            return value
        if isinstance(value, str):
            return str(value)
        return [plain(v) for v in value]

    return plain(trace.as_json(remove_postproc=False))


