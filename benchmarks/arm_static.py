"""Static performance model of the aarch64 GRU kernels: assembly, llvm-mca and a cycle model, no board needed.

One command::

    python benchmarks/arm_static.py --out benchmarks/results/arm_static_after
    python benchmarks/arm_static.py --out arm_static_int8 --weight-dtype int8    # narrow weight storage

For each benchmark shape (batch x input_dim x units: 1x256x256, 1x64x128, 8x256x256; the v1 default cell,
float32) and each core model (Cortex-A72, Neoverse-N1) it cross-compiles the layer's whole-sequence kernel
and the cell's step kernel for ``aarch64`` (4 cores, the rule's default schedule), finds the innermost loops of
their assembly, runs ``llvm-mca`` on each, and writes per kernel:

* cycles per iteration of every product (k) loop and of the element-wise (activation/blend) loops;
* flop/cycle of the product loops against the core's peak;
* runtime barrier calls per step (``__TVMBackendParallelBarrier`` call sites in the layer kernel; one per
  step whenever there is any) and ``fdiv`` counts (layer kernel / step kernel / distinct hot loops);
* L1 refetches of the weights (an LRU model of the core's L1, assumption 7);
* a modelled step time, max(product FMAs x cycles per FMA, L1 refills) + blend + synchronisation, beside the
  L2 and DRAM bandwidth floors of a Raspberry Pi 4 (Cortex-A72) and a Pi 5 (Cortex-A76, modelled as
  Neoverse-N1: the same core family; LLVM's Cortex-A76 model is its Cortex-A57 one). The modelled time leaves
  L2 bandwidth out: a step takes at least the larger of the two.

The figures of an older tree come from the same script run against an export of it:
``git archive <rev> | tar -x -C /tmp/old; ln -s ../schedules /tmp/old/tvm_gru/schedules;
cd /tmp/old && PYTHONPATH=/tmp/old python /path/to/benchmarks/arm_static.py --out ...``.

Outputs in ``--out``: ``results.json``, ``results.md`` (tables and every assumption), ``mca/`` (each distinct
loop and its llvm-mca report) and, with ``--asm``, ``asm/`` (the kernels' whole assembly).

Assumptions (also written into results.md; none of them is a measurement on a board):

1. llvm-mca (LLVM 19 when installed, ``/usr/lib/llvm-19/bin``) models a loop body with its branches removed,
   every load hitting L1, perfect prediction. LLVM has no Cortex-A72 model: ``-mcpu=cortex-a72`` uses the
   Cortex-A57 one (same pipelines, a few latencies differ). LLVM 14's llvm-mca models N1 as A57 too.
2. Every product FMA of a step lies in an innermost product loop (the emitters put one k per iteration), at the
   cycles per FMA of the full register tiles (the loops with the most ``fmla`` per iteration, averaged; the
   input projection's tiles of that size are among them, its narrower GEMV and tail loops are not); a step's
   FMAs per core follow the kernel's static partition of unit blocks (the largest part is the critical one).
   The input projection (one GEMM before the time loop, or in the barrier waits) is not part of a step.
3. Gate epilogues (straight-line code after each tile) are not modelled; the blend loop (every part blends
   all units, reset_after=False) is, at its llvm-mca cycles per iteration.
4. Synchronisation per step: TVM's runtime barrier 2.2 us, the kernel's spin barrier 0.6 us: measured on x86
   (a syscall-bound ``sched_yield`` poll loop against a cache-line handoff); ARM boards are assumed alike.
5. Clocks: Pi 4 Cortex-A72 1.8 GHz, Pi 5 Cortex-A76 2.4 GHz. Peak: two 128-bit FMA pipes, 16 flop/cycle.
6. Bandwidths (public figures, not measured here): Pi 4 L2 (1 MB shared) 16 GB/s per core, 32 GB/s all
   cores, DRAM 4 GB/s; Pi 5 L2 (512 KB per core) 40 GB/s per core, DRAM 9 GB/s. The L2 floor applies when a
   step's recurrent weights fit the L2 (Pi 4: all of them in 1 MB; Pi 5: a core's share in 512 KB).
7. L1: the weight reads of one step of the busiest part (every vector the product loops load, in the
   emitter's order; the state broadcasts and partial sums are left out) go through an LRU model of the L1 data
   cache, Cortex-A72 32 KB 2-way, N1 (for A76) 64 KB 4-way, 64-byte lines; the second of two steps is counted.
   The product loops take the longer of llvm-mca's cycles and the refills (line fills x 64 B at 16 B/cycle on
   A72, 32 B/cycle on N1, from L2). Refetch = fills / distinct lines (1.0: every line fetched once a step).
8. Long calls (8 steps or more): the panel copies of ``gate_panels`` / ``candidate_panels`` are used; their
   one copy per call is not counted.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SHAPES = ((1, 256, 256), (1, 64, 128), (8, 256, 256))  # (batch, input_dim, units)
CORES = {"cortex-a72": {"board": "Pi 4 (Cortex-A72)", "ghz": 1.8, "l2_core": 16e9, "l2_all": 32e9,
                        "l2_bytes": 1 << 20, "l2_shared": True, "dram": 4e9,
                        "l1": (32 << 10, 2), "refill_bytes_per_cycle": 16},
         "neoverse-n1": {"board": "Pi 5 (Cortex-A76 ~ N1)", "ghz": 2.4, "l2_core": 40e9, "l2_all": 160e9,
                         "l2_bytes": 512 << 10, "l2_shared": False, "dram": 9e9,
                         "l1": (64 << 10, 4), "refill_bytes_per_cycle": 32}}
LINE = 64
PEAK_FLOP_PER_CYCLE = 16
SYNC_US = {"runtime": 2.2, "spin": 0.6}
THREADS = 4
BRANCH = re.compile(r"^(b|b\.\w+|cbz|cbnz|tbz|tbnz)\s")
ELEMENTWISE = re.compile(r"^(fdiv|frecpe|frecps|fmax|fmin|fcm|bsl|bif|bit)")


def llvm_mca() -> str:
    for path in ("/usr/lib/llvm-19/bin/llvm-mca", shutil.which("llvm-mca")):
        if path and Path(path).exists():
            return path
    raise SystemExit("llvm-mca not found: apt-get install llvm-19 (or llvm)")


def partition(blocks: int, parts: int) -> list:
    """The sequence emitter's split of the unit blocks over the parts (restated here so that the script also
    models the kernels of an older tree, imported from its export through PYTHONPATH)."""
    edges = [blocks * p // parts for p in range(parts + 1)]
    return [(edges[p], edges[p + 1]) for p in range(parts)]


@dataclass
class Loop:
    """One innermost loop of the assembly: its label, its instructions (no labels or directives)."""

    label: str
    body: list

    def count(self, pattern) -> int:
        return sum(1 for ins in self.body if re.match(pattern, ins))

    @property
    def kind(self) -> str:
        if any(ins.startswith("bl") and not BRANCH.match(ins) for ins in self.body):
            return "call"
        if any(ELEMENTWISE.match(ins) for ins in self.body):
            return "elementwise"
        return "product" if self.count(r"fmla\s+v\d+\.4s") else "other"


def innermost_loops(asm: str) -> list:
    """Loops = a label and a later branch back to it; innermost = no other backward branch inside."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^([.\w$]+):", line))}
    spans = []
    for i, line in enumerate(lines):
        ins = line.strip()
        m = re.match(r"^(?:b|b\.\w+|cbz|cbnz|tbz|tbnz)\s+(?:.*,\s*)?([.\w$]+)$", ins)
        if line.startswith("\t") and m and m.group(1) in labels and labels[m.group(1)] < i:
            spans.append((labels[m.group(1)], i, m.group(1)))
    out = []
    for start, end, label in spans:
        if any(s > start and e < end or (s >= start and e < end and (s, e) != (start, end)) for s, e, _ in spans):
            continue
        body = [ln.strip().split("//")[0].strip() for ln in lines[start + 1:end + 1]
                if ln.startswith("\t") and not ln.strip().startswith(".")]
        out.append(Loop(label, [b for b in body if b]))
    return out


def mca_cycles(loop: Loop, mcpu: str, path: Path) -> float:
    """llvm-mca cycles per iteration of ``loop`` (branches dropped); the report is kept at ``path``."""
    text = "\n".join(ins for ins in loop.body if not BRANCH.match(ins)) + "\n"
    path.with_suffix(".s").write_text(text)
    proc = subprocess.run([llvm_mca(), "-mtriple=aarch64-linux-gnu", f"-mcpu={mcpu}", "-iterations=200"],
                          input=text, capture_output=True, text=True, check=True)
    path.with_suffix(".mca.txt").write_text(proc.stdout)
    iterations = int(re.search(r"Iterations:\s+(\d+)", proc.stdout).group(1))
    return int(re.search(r"Total Cycles:\s+(\d+)", proc.stdout).group(1)) / iterations


def itemsize(spec) -> int:
    """Bytes per stored weight (``weight_dtype``; specs of an older tree have none: float32)."""
    return {"float16": 2, "int8": 1}.get(getattr(spec, "weight_dtype", None), 4)


def weight_reads(spec, sched, part) -> list:
    """Byte addresses of the weight vectors one step of ``part`` reads, in program order (assumption 7).

    Mirrors the emitter's loops: gate tiles (NI blocks, in place ``(NB, H, G, V)`` or ``gate_panels``' tile-major
    copy), each batch tile of a unit tile re-reading its weights, one vector per (block, gate) per k; then
    (reset_after=False) the candidate tiles over the part's input rows of ``R_h`` ``(H, NB, V)`` (or its
    block-major copy with ``candidate_panels``). Arrays sit 4 KB-aligned one after the other.
    """
    h, v, nb, b = spec.config.units, spec.lanes, spec.blocks, spec.batch
    g = 3 if spec.config.reset_after else 2
    vec = v * itemsize(spec)
    lo, hi = partition(nb, sched.threads)[part]
    batch_tiles = -(-b // sched.batch_tile)
    rec = 0
    cand = -(-nb * h * g * vec // 4096) * 4096
    panel_base = cand + -(-h * nb * vec // 4096) * 4096
    cand_panel_base = panel_base + -(-nb * h * g * vec // 4096) * 4096
    out = []

    def tiles(first, last, ni):
        ni = max(1, min(ni, last - first))
        full = (last - first) // ni
        return [(first + t * ni, ni) for t in range(full)] + (
            [(first + full * ni, (last - first) % ni)] if (last - first) % ni else [])

    for n0, count in tiles(lo, hi, sched.unit_blocks):
        for _ in range(batch_tiles):
            for k in range(h):
                for i in range(count):
                    for gi in range(g):
                        if getattr(sched, "gate_panels", False):  # schedules from before the knob
                            out.append(panel_base + (n0 * h * g + (k * count + i) * g + gi) * vec)
                        else:
                            out.append(rec + (((n0 + i) * h + k) * g + gi) * vec)
    if not spec.config.reset_after:
        rows = range(lo * v, min(hi * v, h))
        for n0, count in tiles(0, nb, sched.candidate_blocks):
            for _ in range(batch_tiles):
                for k in rows:
                    for i in range(count):
                        if sched.candidate_panels:
                            out.append(cand_panel_base + ((n0 + i) * h + k) * vec)
                        else:
                            out.append(cand + (k * nb + n0 + i) * vec)
    return out


def l1_misses(addresses, size: int, ways: int) -> tuple:
    """(line fills in a steady-state step, distinct lines) of an LRU ``ways``-way L1 of ``size`` bytes."""
    sets = size // (LINE * ways)
    cache = [[] for _ in range(sets)]
    misses = 0
    for step in range(2):  # the second step sees what the first left behind
        for address in addresses:
            line = address // LINE
            entries = cache[line % sets]
            if line in entries:
                entries.remove(line)
            else:
                misses += step
                if len(entries) == ways:
                    entries.pop(0)
            entries.append(line)
    return misses, len({a // LINE for a in addresses})


def build(shape, mcpu: str, weight_dtype=None):
    """(layer asm, step asm, sequence spec, sequence schedule) for one shape and core."""
    import tvm  # noqa: PLC0415

    from tvm_gru import targets  # noqa: PLC0415
    from tvm_gru.build.sequence import compile_sequence_module, scheduled_sequence, sequence_rule  # noqa: PLC0415
    from tvm_gru.build.step import scheduled_module  # noqa: PLC0415
    from tvm_gru.build.tvm_workarounds import vectorizable_isnan  # noqa: PLC0415
    from tvm_gru.ops.config import GRUConfig, StepSpec  # noqa: PLC0415
    from tvm_gru.ops.sequence import SequenceSpec  # noqa: PLC0415

    batch, input_dim, units = shape
    target = targets.resolve({"name": "aarch64", "mcpu": mcpu, "num-cores": THREADS})
    lanes = targets.lanes(target, "float32")
    narrow = {"weight_dtype": weight_dtype} if weight_dtype else {}  # an older tree's specs have no such field
    spec = SequenceSpec(GRUConfig(units), batch=batch, input_dim=input_dim, lanes=lanes, **narrow)
    sched = sequence_rule(target).default_schedule(spec, target)
    layer = compile_sequence_module(scheduled_sequence(spec, target, sched), target)
    with vectorizable_isnan():
        step = tvm.compile(scheduled_module(StepSpec(GRUConfig(units), batch=batch, input_dim=input_dim,
                                                     lanes=lanes, **narrow), target), target=target)
    return layer.mod.inspect_source("asm"), step.mod.inspect_source("asm"), spec, sched


def step_fmas(spec, threads: int) -> int:
    """Vector FMAs of one step on the busiest core (assumption 2)."""
    h, v, nb, b = spec.config.units, spec.lanes, spec.blocks, spec.batch
    worst = 0
    for lo, hi in partition(nb, threads):
        if spec.config.reset_after:
            fmas = b * h * 3 * (hi - lo)
        else:
            fmas = b * h * 2 * (hi - lo) + b * max(0, min(hi * v, h) - lo * v) * nb
        worst = max(worst, fmas)
    return worst


def analyse(shape, mcpu: str, out: Path, keep_asm: bool = False, weight_dtype=None) -> dict:
    layer_asm, step_asm, spec, sched = build(shape, mcpu, weight_dtype)
    name = f"{'x'.join(map(str, shape))}-{mcpu}"
    (out / "mca").mkdir(parents=True, exist_ok=True)
    if keep_asm:
        (out / "asm").mkdir(parents=True, exist_ok=True)
        (out / "asm" / f"layer-{name}.s").write_text(layer_asm)
        (out / "asm" / f"step-{name}.s").write_text(step_asm)
    loops, seen = {"product": [], "elementwise": []}, set()
    for loop in innermost_loops(layer_asm):
        # the per-part copies differ in registers and offsets only
        key = tuple(re.sub(r"#-?\d+|\b[xwqsv]\d+\b|\.LBB\w+", "n", ins) for ins in loop.body)
        if loop.kind not in loops or key in seen:
            continue
        seen.add(key)
        cycles = mca_cycles(loop, mcpu, out / "mca" / f"{name}-{loop.kind}-{len(loops[loop.kind])}")
        loops[loop.kind].append({"label": loop.label, "instructions": len(loop.body), "cycles_per_iter": cycles,
                                 "fmla": loop.count(r"fmla\s+v\d+\.4s"), "fdiv": loop.count(r"fdiv")})
    product = loops["product"]
    full = [lp for lp in product if lp["fmla"] == max(p["fmla"] for p in product)]  # assumption 2
    cycles_per_fma = sum(lp["cycles_per_iter"] for lp in full) / sum(lp["fmla"] for lp in full)
    fmas = step_fmas(spec, sched.threads)
    blend_iters = spec.batch * spec.blocks if not spec.config.reset_after else 0
    blend = max((lp["cycles_per_iter"] for lp in loops["elementwise"]), default=0.0) * blend_iters
    # TVM calls its runtime through function pointers: the GOT load of the pointer marks each call site.
    barrier_sites = len(re.findall(r"(?:\bbl\s+|:got:)__TVMBackendParallelBarrier\b", layer_asm))
    sync = "runtime" if barrier_sites else ("spin" if sched.threads > 1 else "none")
    core = CORES[mcpu]
    sync_cycles = SYNC_US.get(sync, 0.0) * core["ghz"] * 1e3
    worst = max(range(sched.threads), key=lambda p: len(weight_reads(spec, sched, p)))
    fills, lines = l1_misses(weight_reads(spec, sched, worst), *core["l1"])
    refill_cycles = fills * LINE / core["refill_bytes_per_cycle"]
    product_cycles = max(fmas * cycles_per_fma, refill_cycles)
    step_cycles = product_cycles + blend + sync_cycles
    weights = 3 * spec.config.units * spec.padded_units * itemsize(spec)  # R_z, R_r (NB, H, 2, V), R_h (H, NB, V)
    per_core = weights / sched.threads
    fits = weights <= core["l2_bytes"] if core["l2_shared"] else per_core <= core["l2_bytes"]
    l2_floor = max(per_core / core["l2_core"], weights / core["l2_all"]) * 1e6
    return {"shape": "x".join(map(str, shape)), "mcpu": mcpu, "weight_dtype": weight_dtype or "float32",
            "schedule": repr(sched), "threads": sched.threads,
            "product_loops": product, "elementwise_loops": loops["elementwise"],
            "cycles_per_fma": cycles_per_fma, "flop_per_cycle": 8 / cycles_per_fma,
            "peak_fraction": 8 / cycles_per_fma / PEAK_FLOP_PER_CYCLE,
            "fmas_per_step_core": fmas, "mca_product_cycles": fmas * cycles_per_fma, "l1_fills": fills,
            "weight_lines": lines, "l1_refetch": fills / lines, "refill_cycles": refill_cycles,
            "product_cycles": product_cycles, "blend_cycles": blend,
            "sync": sync, "sync_cycles": sync_cycles, "barrier_call_sites": barrier_sites,
            "barrier_calls_per_step": 1 if barrier_sites else 0,
            "fdiv_layer": len(re.findall(r"\bfdiv\b", layer_asm)), "fdiv_step": len(re.findall(r"\bfdiv\b", step_asm)),
            "fdiv_hot_loops": sum(lp["fdiv"] for lp in product + loops["elementwise"]),
            "step_cycles": step_cycles, "board": core["board"], "step_us": step_cycles / core["ghz"] / 1e3,
            "weights_bytes": weights, "weights_fit_l2": fits, "l2_floor_us": l2_floor,
            "dram_floor_us": weights / core["dram"] * 1e6}


def write(rows, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    dtypes = sorted({r.get("weight_dtype", "float32") for r in rows})
    lines = ["# aarch64 static model (llvm-mca; no board)", "", f"Weight storage: {', '.join(dtypes)}.", "",
             "| shape | core | threads | sync | barrier calls/step | fdiv layer/step/hot | cycles/FMA | flop/cycle "
             "(% peak) | L1 refetch | product cycles (mca / refill) | blend cycles | modelled cycles/step | board "
             "| modelled us/step | L2 floor us | DRAM floor us |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['mcpu']} | {r['threads']} | {r['sync']} | {r['barrier_calls_per_step']} "
                     f"({r['barrier_call_sites']} sites) | {r['fdiv_layer']}/{r['fdiv_step']}/{r['fdiv_hot_loops']} | "
                     f"{r['cycles_per_fma']:.2f} | {r['flop_per_cycle']:.1f} ({100 * r['peak_fraction']:.0f} %) | "
                     f"{r['l1_refetch']:.2f} | {r['mca_product_cycles']:.0f} / {r['refill_cycles']:.0f} | "
                     f"{r['blend_cycles']:.0f} | {r['step_cycles']:.0f} | {r['board']} | {r['step_us']:.2f} | "
                     f"{r['l2_floor_us']:.2f}{'' if r['weights_fit_l2'] else ' (no fit)'} | {r['dram_floor_us']:.1f} |")
    lines += ["", "Loops (llvm-mca cycles per iteration):", ""]
    for r in rows:
        for kind in ("product_loops", "elementwise_loops"):
            for lp in r[kind]:
                lines.append(f"- {r['shape']} {r['mcpu']} {kind[:-6]} {lp['label']}: {lp['instructions']} "
                             f"instructions, {lp['fmla']} fmla, {lp['fdiv']} fdiv, {lp['cycles_per_iter']:.2f} cycles")
    lines += ["", "## Assumptions", "", __doc__.split("Assumptions (also written into results.md; none of them is "
                                                     "a measurement on a board):")[1].strip(), ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--asm", action="store_true", help="also keep the kernels' whole assembly (asm/)")
    parser.add_argument("--shapes", nargs="*", default=None, metavar="BxIxH",
                        help="batch x input_dim x units (default: " + " ".join("x".join(map(str, sh)) for sh in SHAPES)
                        + ")")
    parser.add_argument("--weight-dtype", choices=["float32", "float16", "int8"], default=None,
                        help="storage of the weight matrices (GRU(weight_dtype=...)); default float32")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    shapes = [tuple(int(n) for n in sh.split("x")) for sh in args.shapes] if args.shapes else SHAPES
    rows = [analyse(shape, mcpu, args.out, keep_asm=args.asm, weight_dtype=args.weight_dtype)
            for shape in shapes for mcpu in CORES]
    write(rows, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
