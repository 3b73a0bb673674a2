"""TIR emitter of the whole-sequence GRU kernel (:mod:`tvm_gru.ops.sequence`) for CPUs.

:class:`SequenceEmitter` writes the kernel that :class:`~.sequence_rules.CPUSequenceRule` asks for: the knobs
arrive as a :class:`~.sequence_rules.SequenceSchedule` (read by attribute only) and the target-derived choices
(``spin_barrier``, the ISA of the spin barrier, and ``max_accumulators``) as arguments, so this module
imports nothing from the rule.

The recurrence is a loop over time with a data dependence between steps, so the schedule is written as
explicit TIR with the TVMScript IR builder (TVM 0.27 cannot lower ``te.scan``) rather than derived with
``s_tir.Schedule`` primitives. Shape of the generated code, for NT parts (one per core), each owning a
contiguous range of unit blocks (V units each)::

    one parallel launch for the whole call:
      [part j] h0 -> state buffers; xp[:, :, own blocks] = x @ K + b over all T*B rows (tiles MR rows x 3V)
      barrier
      for t in range(T):                              # reset_after=True
        [part j] own block tiles (NI blocks x BT rows): acc = h_{t-1} @ R[:, tile], k outermost, acc in
                 registers; epilogue: z, r, candidate, blend, mask -> S[t % 2][own units]
        [part 0] the output of step t-1 (complete since the barrier) -> the user's arrays
        barrier                                        # the only synchronisation of a step
      for t in range(T + 1):                          # reset_after=False: the candidate needs r * h first
        [part j] t > 0: blend step t-1 for ALL units into the part's private state copy, from Z and the
                        candidate partial sums P of every part
                 t < T: z, r of own blocks -> Z; (r*h)[own units] @ R_h[own rows, :] -> P[j]
        barrier                                        # still one per step
    the weights a part streams stay in its core's L2 for the whole call.

At batch 1 with small input weights (``gemm_in_barrier``, reset_after=False) the GEMM is deferred instead: only
the first MR steps' rows before the loop, then at each step every part projects a slice of its blocks of the
next MR-step row group between arriving at the barrier and waiting on it, where the core would otherwise idle.

Splitting the candidate product by *input* units (reset_after=False) is what keeps one barrier per step:
every part needs the whole previous state, and gets it from the partial sums instead of a second barrier.
With several batch tiles (``candidate_panels``) each part first copies its rows of R_h block-major, so a
candidate tile's weights are contiguous and stay cached across the batch tiles. With ``gate_panels`` (aarch64)
each part copies its blocks of the z/r(/h) recurrent weights tile-major, one contiguous run per k and tile.
The barrier is the kernel's own spin barrier on x86 and aarch64 (fences per ISA, see ``SequenceEmitter.fence``).
Weights stored narrower than the kernel dtype (``spec.weight_dtype`` float16 or int8) stay narrow in memory, panel
copies included, and are widened as each is read in an inner loop (``SequenceEmitter.widen``); int8 products are
multiplied by their column's scale once, in the epilogue that reads the accumulator (``SequenceEmitter.scaled``).
With NT=1 the same code runs serially with no parallel launch (the cheapest for small sizes and single
streamed frames). Knobs are in :class:`~.sequence_rules.SequenceSchedule`;
:class:`~.sequence_rules.CPUSequenceRule` picks them.
"""

from __future__ import annotations

__all__ = ["SequenceEmitter", "partition", "SPIN_BARRIERS"]

# The ISAs the emitter has a spin barrier for (see SequenceEmitter.fence).
SPIN_BARRIERS = ("x86", "aarch64")


# ------------------------------------------------------------------------------------------------------
# TIR emission. Everything below writes loops with the TVMScript IR builder; Python loops unroll the
# register tiles (every accumulator index is a constant, so LLVM keeps them in vector registers).
def partition(blocks: int, parts: int) -> list:
    """Split ``blocks`` into ``parts`` contiguous, non-empty ranges as evenly as possible."""
    edges = [blocks * p // parts for p in range(parts + 1)]
    return [(edges[p], edges[p + 1]) for p in range(parts)]


class SequenceEmitter:
    """Writes one sequence kernel (see the module docstring for the structure).

    Parameters
    ----------
    spec : tvm_gru.ops.sequence.SequenceSpec
    sched : tvm_gru.schedules.sequence_rules.SequenceSchedule
        The knobs, used as given (the rule has checked them).
    spin_barrier : str or None
        Synchronise the parts with the kernel's own spin barrier for this ISA, ``"x86"`` or ``"aarch64"``
        (only used with two or more parts); None: TVM's runtime barrier.
    max_accumulators : int
        Vector registers a register tile may hold as accumulators: sets the blocks per GEMV tile of the
        input projection (``max_accumulators // 3``, three gates each).
    """

    def __init__(self, spec, sched, spin_barrier: str | None = None, *, max_accumulators: int):
        from tvm import tirx  # noqa: PLC0415
        from tvm.tirx.script.builder import ir as T  # noqa: PLC0415

        from tvm_gru.ops.sequence import GateMath  # noqa: PLC0415

        self.tirx, self.T = tirx, T
        self.spec, self.sched, self.c = spec, sched, spec.config
        self.dt = spec.config.dtype
        self.wdt = spec.storage_dtype  # of the weight matrices (and their panel copies); float16/int8: widened on read
        self.V, self.NB, self.H, self.Hp = spec.lanes, spec.blocks, spec.config.units, spec.padded_units
        self.B, self.I = spec.batch, spec.input_dim
        self.NT = sched.threads
        self.parts = partition(self.NB, self.NT)
        self.math = GateMath(spec.config)
        self.G = 3 if spec.config.reset_after else 2  # gates in recurrent_packed: z, r (and h with reset_after)
        self.buf = {}
        if spin_barrier not in (None, *SPIN_BARRIERS):
            raise ValueError(f"spin_barrier must be None or one of {SPIN_BARRIERS}, received {spin_barrier!r}")
        self.isa = spin_barrier
        self.spin_barrier = spin_barrier is not None and self.NT > 1
        self.max_accumulators = max_accumulators

    # ---------------------------------------------------------------- small helpers
    def const(self, value, dtype=None):
        return self.tirx.const(value, dtype or self.dt)

    def vstore(self, buf, indices_of, value_of):
        """``buf[indices_of(v)] = value_of(v)`` for v in a V-wide vectorized loop."""
        with self.T.vectorized(0, self.V) as v:
            self.T.buffer_store(buf, value_of(v), indices_of(v))

    def widen(self, weight):
        """A weight element as the kernel dtype: a cast from float16 or int8 storage, as it is read in the inner
        loop (LLVM turns the V-wide cast into vcvtph2ps / vpmovsxbd + vcvtdq2ps on x86, fcvtl / sxtl + scvtf on
        aarch64); the default's TIR is unchanged (no cast), so are its tuning records' kernel hashes."""
        return weight if self.wdt == self.dt else weight.astype(self.dt)

    def scaled(self, acc, row, g, u):
        """``acc`` (a finished sum over k of x * float(q)) times its Keras column's int8 scale: ``weight_scale[row,
        g, u]``, row 0 the kernel's, row 1 the recurrent kernel's. Once per accumulator, after the reduction, so
        the k loop multiplies by the raw int8 values only. Other storage dtypes: ``acc`` unchanged."""
        if self.wdt != "int8":
            return acc
        return acc * self.buf["weight_scale"][row, g, u]

    def local(self, n):
        """A small constant-size buffer: "global" scope keeps it a stack alloca (registers after SROA)."""
        return self.T.decl_buffer((n * self.V,), self.dt, scope="global")

    def for_parts(self, j, body):
        """Run ``body(p)`` for the part ``p`` that this task owns (static ranges per part)."""
        if self.NT == 1:
            body(0)
            return
        for p in range(self.NT):
            with self.T.If(j == p):
                with self.T.Then():
                    body(p)

    def parallel_region(self, body, epoch=None, after_arrive=None):
        """``body(p)`` for every part, split over the threads; with an ``epoch`` the threads then wait for
        each other (a barrier), otherwise not. ``after_arrive(p)`` (spin barrier only) runs between a part's
        arrival and its wait: work that the other parts do not need this step."""
        T = self.T
        if self.NT == 1:
            body(0)
            return
        if epoch is None:
            with T.parallel(0, self.NT) as j:
                self.for_parts(j, body)
        elif self.spin_barrier:
            with T.parallel(0, self.NT) as j:
                self.for_parts(j, lambda p: (body(p), self.arrive(p, epoch), after_arrive and after_arrive(p)))
            self.wait_all(epoch)
        else:
            with T.attr(0, "pragma_parallel_barrier_when_finish", 1):
                with T.parallel(0, self.NT) as j:
                    self.for_parts(j, body)

    # Spin barrier. TVM's TVMBackendParallelBarrier calls sched_yield on every poll; a step of the small shapes is
    # ~1 us, so that syscall latency was most of it (measured on x86, a 2-step toy loop: 2.2 us per step with it,
    # 0.6-0.7 us with this). Each part publishes "done with epoch e" in its own cache line (64 bytes on every
    # x86 and Cortex-A/Neoverse core); every thread polls all of them. After 32 polls (~1 us) a waiter yields the
    # core, so an oversubscribed machine still moves.
    #
    # Ordering, per ISA (the flag accesses are plain 32-bit loads and stores, single-copy atomic on both):
    # * x86 (TSO) keeps loads and stores in order by itself; mfence only stops the compiler (LLVM treats the
    #   intrinsic as touching memory, so no load or store moves across it).
    # * aarch64 is weakly ordered: the arrive is a release, ``dmb ish; str`` (every earlier load and store of
    #   the part, e.g. its results and its reads of buffers others overwrite next step, is observed before
    #   the flag), and the wait an acquire, ``ldr`` polls then ``dmb ish`` (the flags seen are ordered before
    #   every later access). That is the fence form of C++ release/acquire, correct on any ARMv8 memory
    #   system. Not ldar/stlr or LSE atomics: TIR has no atomic load/store for LLVM CPUs (``tirx.atomic_add``
    #   is rejected by TVM's CPU codegen: "CPU backend does not support atomic add yet") and the
    #   ``llvm.aarch64.ldaxr``/``stlxr`` intrinsics need an ``elementtype`` attribute TVM's call_llvm_intrin
    #   does not emit (LLVM's verifier rejects the module). ``llvm.aarch64.dmb`` is not ``readnone``, so LLVM
    #   moves no memory access across it either, and neither across ``llvm.aarch64.hint`` (``yield``) in the
    #   poll loop, which therefore reloads the flag every iteration (tests/schedules/test_arm_barrier.py checks
    #   all of this in the generated assembly; qemu-user runs aarch64 threads on x86's stronger model, so only
    #   the assembly can show a missing fence).
    _FLAG_STRIDE = 16  # int32 per flag: one 64-byte line each
    _GEMM_CHUNK_TILES = 32  # GEMM row tiles per chunk (128 rows of x)
    _SPINS_BEFORE_YIELD = 32
    # candidate_panels: calls shorter than this read R_h in place. Copying it costs about 4 steps' gain
    # (1x512x1024, one step: 0.32 ms in place, 0.70 ms with the copy; 8x512x1024: ~0.1 ms/step gained).
    _PANEL_MIN_STEPS = 8
    _DMB_ISH = 11  # the CRm field of dmb: inner shareable, loads and stores

    def fence(self):
        """A full fence (``dmb ish``) on aarch64; a compiler-only barrier (``mfence``, see above) on x86."""
        if self.isa == "aarch64":
            self.T.evaluate(self.tirx.call_llvm_intrin("void", "llvm.aarch64.dmb",
                                                       self.tirx.const(self._DMB_ISH, "int32")))
        else:
            self.T.evaluate(self.tirx.call_llvm_intrin("void", "llvm.x86.sse2.mfence"))

    def relax(self):
        """The spin-wait hint: ``pause`` on x86, ``yield`` (hint #1) on aarch64."""
        if self.isa == "aarch64":
            self.T.evaluate(self.tirx.call_llvm_intrin("void", "llvm.aarch64.hint", self.tirx.const(1, "int32")))
        else:
            self.T.evaluate(self.tirx.call_llvm_intrin("void", "llvm.x86.sse2.pause"))

    def arrive(self, p, epoch):
        self.fence()  # release: everything this part did before is visible before its flag
        self.T.buffer_store(self.buf["flags"], epoch, [p * self._FLAG_STRIDE])

    def wait_all(self, epoch):
        T, tirx, flags = self.T, self.tirx, self.buf["flags"]
        spins = T.decl_buffer((1,), "int32", scope="global")
        T.buffer_store(spins, tirx.const(0, "int32"), [0])
        for q in range(self.NT):
            with T.While(flags[q * self._FLAG_STRIDE] < epoch):
                self.relax()
                T.buffer_store(spins, spins[0] + 1, [0])
                with T.If(spins[0] > self._SPINS_BEFORE_YIELD):
                    with T.Then():
                        T.evaluate(tirx.call_extern("int32", "sched_yield"))
        self.fence()  # acquire: the flags seen are ordered before everything that follows

    def orig_time(self, t):
        """Processing step -> index into x / mask (reversed for go_backwards)."""
        return self.tirx.Select(self.reverse != 0, self.steps - 1 - t, t)

    def xin(self, t, b, k, g):
        s = self.spec
        idx = (t, b, k) if s.time_major else (b, t, k)
        x = self.buf["x"][idx]
        if s.input_masks:
            x = x * self.buf["input_mask"][min(g, s.input_masks - 1), b, k]
        return x

    def valid(self, tt, b):
        return self.buf["mask"][(tt, b) if self.spec.time_major else (b, tt)]

    def write_all(self, store, value):
        """``store(b, u, value(b, u))`` for every unit u < H: whole vectors, then a scalar tail.

        Outputs to user arrays are written by part 0 alone, from state that is complete after a barrier:
        user arrays are not cache-line aligned, so two cores writing halves of a row would share lines.
        """
        T, V = self.T, self.V
        vec_end = (self.H // V) * V
        for b in range(self.B):
            if vec_end:
                with T.serial(0, vec_end // V) as n:
                    with T.vectorized(0, V) as v:
                        store(b, n * V + v, value(b, n * V + v))
            if self.H > vec_end:
                with T.serial(vec_end, self.H) as u:
                    store(b, u, value(b, u))

    # ---------------------------------------------------------------- signature
    def params(self):
        T, tirx, s, c = self.T, self.tirx, self.spec, self.c
        B, I, H = self.B, self.I, self.H
        self.steps = tirx.Var("T", "int32")
        elem = 4 if self.dt == "float32" else 8  # user arrays: element-aligned, not 64-byte aligned

        def arg(name, shape, dtype=self.dt, align=0):
            handle = T.arg(name, T.handle())
            self.buf[name] = T.match_buffer(handle, shape, dtype, align=align or -1)

        steps = self.steps
        arg("x", (steps, B, I) if s.time_major else (B, steps, I), align=elem)
        arg("h0", (B, H), align=elem)
        if s.masked:
            arg("mask", (steps, B) if s.time_major else (B, steps), "uint8", align=1)
        for name, (shape, dtype) in s.weight_specs().items():
            arg(name, shape, dtype)
        if s.input_masks:
            arg("input_mask", (s.input_masks, B, I), align=elem)
        if s.recurrent_masks:
            arg("recurrent_mask", (3, B, self.Hp), align=elem)
        if s.return_sequences:
            arg("sequence", (steps, B, H) if s.time_major else (B, steps, H), align=elem)
        arg("last", (B, H), align=elem)
        arg("state", (B, H), align=elem)
        self.reverse = T.arg("reverse", tirx.Var("reverse", "int32"))
        del c

    def workspaces(self):
        T, B, Hp, NT = self.T, self.B, self.Hp, self.NT
        self.buf["xp"] = T.decl_buffer((self.steps, B, self.NB, 3, self.V), self.dt, scope="global")
        if self.c.reset_after:
            self.buf["S"] = T.decl_buffer((2, B, Hp), self.dt, scope="global")
            if self.spec.masked:
                self.buf["O"] = T.decl_buffer((2, B, Hp), self.dt, scope="global")
        else:
            self.buf["HL"] = T.decl_buffer((NT, B, Hp), self.dt, scope="global")
            if self.spec.masked:
                self.buf["OL"] = T.decl_buffer((NT, B, Hp), self.dt, scope="global")
            self.buf["Z"] = T.decl_buffer((2, B, Hp), self.dt, scope="global")
            self.buf["P"] = T.decl_buffer((2, NT, B, Hp), self.dt, scope="global")
            self.buf["RH"] = T.decl_buffer((B, Hp), self.dt, scope="global")
            if self.sched.candidate_panels:
                self.buf["CP"] = T.decl_buffer((self.NB, self.H, self.V), self.wdt, scope="global")
        if self.sched.gate_panels:  # panels are copies of the stored weights: narrow storage stays narrow
            self.buf["GP"] = T.decl_buffer((self.NB * self.H * self.G * self.V,), self.wdt, scope="global")
        self.panels = self.steps >= self._PANEL_MIN_STEPS

    # ---------------------------------------------------------------- phases
    def build(self):
        from tvm.script.ir_builder import IRBuilder  # noqa: PLC0415

        T = self.T
        with IRBuilder() as ib:
            with T.prim_func():
                T.func_name("main")
                T.func_attr({"tir.noalias": True})
                self.params()
                self.workspaces()
                self.body()
        return ib.get()

    def body(self):
        T = self.T
        iterations = self.steps if self.c.reset_after else self.steps + 1
        step = self.step_after if self.c.reset_after else self.step_before

        def everything():
            deferred = self.gemm_deferred()
            self.parallel_region(lambda p: (self.init_state(p), self.candidate_copy(p), self.gate_copy(p),
                                            self.gemm_head(p) if deferred else self.gemm(p)), epoch=1)
            with T.serial(0, iterations) as t:
                self.parallel_region(lambda p: step(p, t), epoch=t + 2,
                                     after_arrive=(lambda p: self.gemm_in_barrier(p, t)) if deferred else None)
            self.parallel_region(self.final)

        if self.NT == 1:
            everything()
            return
        if self.spin_barrier:
            flags = self.buf["flags"] = T.decl_buffer((self.NT * self._FLAG_STRIDE,), "int32", scope="global")
            for i in range(self.NT):  # before the launch: the workers see it
                T.buffer_store(flags, self.tirx.const(0, "int32"), [i * self._FLAG_STRIDE])
        with T.attr(0, "pragma_parallel_launch_point", 1):
            everything()

    def init_state(self, p):
        """State buffers <- h0 (padding lanes zero); masked-output buffers <- 0.

        reset_after=True: the shared ping-pong state, own blocks only. Otherwise every part's private copy,
        all units.
        """
        T, tirx, zero, h0 = self.T, self.tirx, self.const(0.0), self.buf["h0"]

        def initial(b, u):
            return tirx.if_then_else(u < self.H, h0[b, tirx.min(u, self.H - 1)], zero)

        if self.c.reset_after:
            lo, hi = self.parts[p]
            units, slot = (lo * self.V, hi * self.V), 1  # step 0 reads the "previous" slot (0 - 1) % 2
            targets = [(self.buf["S"], initial)] + ([(self.buf["O"], lambda b, u: zero)] if self.spec.masked else [])
        else:
            units, slot = (0, self.Hp), p
            targets = [(self.buf["HL"], initial)] + ([(self.buf["OL"], lambda b, u: zero)] if self.spec.masked else [])
        for buf, value in targets:
            for b in range(self.B):
                with T.serial(*units) as u:
                    T.buffer_store(buf, value(b, u), [slot, b, u])

    def candidate_copy(self, p):
        """``candidate_panels``: CP[n, k, :] = R_h[k, n, :] for the part's own rows k (all that it reads)."""
        if self.c.reset_after or not self.sched.candidate_panels:
            return
        T, V, cand, cp = self.T, self.V, self.buf["candidate_packed"], self.buf["CP"]
        lo, hi = self.parts[p]
        end = min(hi * V, self.H)
        if end <= lo * V:
            return
        with T.If(self.panels):
            with T.Then():
                with T.serial(0, self.NB) as n:
                    with T.serial(lo * V, end) as k:
                        self.vstore(cp, lambda v: [n, k, v], lambda v: cand[k, n, v])

    def gate_tiles(self, blocks):
        """``(ni, full, rem)``: the gate products' unit tiling of ``blocks`` (see :meth:`products`)."""
        lo, hi = blocks
        ni = max(1, min(self.sched.unit_blocks, hi - lo))
        return ni, (hi - lo) // ni, (hi - lo) % ni

    def gate_panel(self, n0, count, i, k, g, v):
        """Element (block n0+i, row k, gate g, lane v) of ``gate_panels``' copy: the tile of ``count`` blocks at
        n0 is one (H, count, G, V) panel at the offset of its first block, so its k rows are contiguous."""
        return self.buf["GP"][n0 * (self.H * self.G * self.V) + ((k * count + i) * self.G + g) * self.V + v]

    def gate_copy(self, p):
        """``gate_panels``: copy the part's own blocks of the recurrent weights tile by tile into GP, each
        register tile's weights one contiguous run per k (in place a tile reads NI streams H*G*V*4 bytes
        apart, which share a few sets of a 2-way L1 and evict each other's lines before their second half is
        used)."""
        if not self.sched.gate_panels:
            return
        T, rec, gp = self.T, self.buf["recurrent_packed"], self.buf["GP"]
        lo, _ = self.parts[p]
        ni, full, rem = self.gate_tiles(self.parts[p])

        def copy(n0, count):
            with T.serial(0, self.H) as k:
                for i in range(count):
                    for g in range(self.G):
                        base = n0 * (self.H * self.G * self.V) + ((k * count + i) * self.G + g) * self.V
                        self.vstore(gp, lambda v, base=base: [base + v],
                                    lambda v, i=i, g=g: rec[n0 + i, k, g, v])

        with T.If(self.panels):
            with T.Then():
                if full:
                    with T.serial(0, full) as nt:
                        copy(lo + nt * ni, ni)
                if rem:
                    copy(lo + full * ni, rem)

    def gate_products(self, p, gates, h_of, epilogue):
        """The z, r (and h) products of part p's own blocks: from the panels of ``gate_panels`` in calls of
        ``_PANEL_MIN_STEPS`` steps or more, else in place."""
        rec = self.buf["recurrent_packed"]

        def run(weight):
            self.products(self.parts[p], weight, gates, h_of, epilogue, (0, self.H))

        def in_place(n0, count, i, k, g, v):
            return rec[n0 + i, k, g, v]

        if not self.sched.gate_panels:
            run(in_place)
            return
        with self.T.If(self.panels):
            with self.T.Then():
                run(self.gate_panel)
            with self.T.Else():
                run(in_place)

    def gemm(self, p):
        """xp[t, b, own blocks] = x[t, b] @ K + biases over all T*B rows.

        Full row tiles are MR rows x one block (x 3 gates); the MR-1 leftover rows (all of them for a single
        streamed frame) are GEMVs, tiled over several blocks instead so the accumulators stay independent.
        """
        T, tirx = self.T, self.tirx
        lo, hi = self.parts[p]
        rows, mr = self.steps * self.B, self.sched.gemm_rows
        tiles, chunk = rows // mr, self._GEMM_CHUNK_TILES
        # Row chunks outermost: a chunk of x (chunk*MR rows) stays in L2 while every own block passes over it;
        # each block's K panel (I x 3 x V) stays in L1 across the chunk's row tiles.
        with T.serial(0, tirx.floordiv(tiles + chunk - 1, chunk)) as c:
            with T.serial(lo, hi) as n:
                with T.serial(c * chunk, tirx.min(c * chunk + chunk, tiles)) as mt:
                    self.gemm_tile([mt * mr + r for r in range(mr)], n, 1)
        per_row = max(1, min(hi - lo, self.max_accumulators // 3))
        full, rem = (hi - lo) // per_row, (hi - lo) % per_row
        with T.serial(rows - rows % mr, rows) as m:
            if full:
                with T.serial(0, full) as nt:
                    self.gemm_tile([m], lo + nt * per_row, per_row)
            if rem:
                self.gemm_tile([m], lo + full * per_row, rem)

    def gemm_deferred(self) -> bool:
        """Whether this kernel projects the inputs in the barrier waits (see ``SequenceSchedule.gemm_in_barrier``)."""
        return (self.sched.gemm_in_barrier and not self.c.reset_after and self.B == 1 and self.NT > 1
                and self.spin_barrier)

    def gemm_head(self, p):
        """Deferred projection, the part before the time loop: the first MR processing steps' rows (GEMVs)."""
        T, tirx = self.T, self.tirx
        lo, hi = self.parts[p]
        per_row = max(1, min(hi - lo, self.max_accumulators // 3))
        with T.serial(0, tirx.min(self.sched.gemm_rows, self.steps)) as s_:
            for n0 in range(lo, hi, per_row):
                self.gemm_tile([self.orig_time(s_)], n0, min(per_row, hi - n0))

    def gemm_in_barrier(self, p, t):
        """Deferred projection at iteration t, between the part's arrival and its wait: blocks slice t % MR of
        the own blocks for the row tile of processing steps g*MR .. g*MR+MR-1, g = t // MR + 1. Group g is
        thus complete at the end of iteration g*MR - 1, before its first step; only its own part reads it."""
        T, tirx, mr = self.T, self.tirx, self.sched.gemm_rows
        lo, hi = self.parts[p]
        per_slice = -(-(hi - lo) // mr)
        first = (tirx.floordiv(t, mr) + 1) * mr
        for j in range(mr):
            b0, b1 = lo + j * per_slice, min(lo + (j + 1) * per_slice, hi)
            if b0 >= b1:
                continue
            with T.If(tirx.all(tirx.floormod(t, mr) == j, first < self.steps)):
                with T.Then():
                    with T.If(first + mr <= self.steps):
                        with T.Then():
                            with T.serial(b0, b1) as n:
                                self.gemm_tile([self.orig_time(first + r) for r in range(mr)], n, 1)
                        with T.Else():  # the last, partial group: one row at a time
                            with T.serial(first, self.steps) as m:
                                with T.serial(b0, b1) as n:
                                    self.gemm_tile([self.orig_time(m)], n, 1)

    def gemm_tile(self, rows, n0, count):
        """One register tile: ``rows`` x blocks ``n0 .. n0+count`` x 3 gates."""
        T, tirx, V, s, c = self.T, self.tirx, self.V, self.spec, self.c
        W, xp = self.buf["kernel_packed"], self.buf["xp"]
        acc = self.local(len(rows) * count * 3)

        def slot(r, i, g):
            return ((r * count + i) * 3 + g) * V

        for i in range(len(rows) * count * 3):
            self.vstore(acc, lambda v, i=i: [i * V + v], lambda v: self.const(0.0))
        coords = [(tirx.floordiv(m, self.B), tirx.floormod(m, self.B)) for m in rows]
        with T.serial(0, self.I) as k:
            for r, (t, b) in enumerate(coords):
                shared = None if s.input_masks > 1 else self.xin(t, b, k, 0)
                for i in range(count):
                    for g in range(3):
                        xv = shared if shared is not None else self.xin(t, b, k, g)
                        idx = slot(r, i, g)
                        self.vstore(acc, lambda v, idx=idx: [idx + v],
                                    lambda v, idx=idx, xv=xv, g=g, i=i: acc[idx + v]
                                    + xv * self.widen(W[n0 + i, k, g, v]))
        bias = self.buf.get("bias_packed")
        for r, (t, b) in enumerate(coords):
            for i in range(count):
                n = n0 + i
                for g in range(3):
                    idx = slot(r, i, g)

                    def value(v, idx=idx, g=g, n=n):
                        out = self.scaled(acc[idx + v], 0, g, n * V + v)
                        if bias is not None:
                            out = out + bias[0, g, n * V + v]
                            if c.reset_after and g < 2:  # z and r: the recurrent bias is a plain sum too
                                out = out + bias[1, g, n * V + v]
                        return out

                    self.vstore(xp, lambda v, t=t, b=b, n=n, g=g: [t, b, n, g, v], value)

    def products(self, blocks, weight, gates, h_of, epilogue, depth):
        """Register-tiled ``acc[b, n, g] = sum_k h_of(b, k, g) * weight(n0, count, i, k, gi, v)`` over ``blocks``.

        ``weight`` reads block ``n0 + i`` of the tile of ``count`` blocks at ``n0`` (so a layout may place each
        tile's weights together). ``depth`` is the k range ``(start, stop)``; ``epilogue(b, n, accs)``
        receives, per batch row and unit block, a function ``accs(gi, v)`` reading the accumulator of the gate
        at lane v.
        """
        T = self.T
        lo, hi = blocks
        ni, bt = self.sched.unit_blocks if len(gates) > 1 else self.sched.candidate_blocks, self.sched.batch_tile
        ni = max(1, min(ni, hi - lo))
        full, rem = (hi - lo) // ni, (hi - lo) % ni
        bfull, brem = self.B // bt, self.B % bt

        def over_batch(n0, count):
            if bfull:
                with T.serial(0, bfull) as bo:
                    self.product_tile(n0, count, [bo * bt + i for i in range(bt)], weight, gates, h_of, epilogue, depth)
            if brem:
                self.product_tile(n0, count, [bfull * bt + i for i in range(brem)], weight, gates, h_of, epilogue,
                                  depth)

        if full:
            with T.serial(0, full) as nt:
                over_batch(lo + nt * ni, ni)
        if rem:
            over_batch(lo + full * ni, rem)

    def product_tile(self, n0, count, batch_rows, weight, gates, h_of, epilogue, depth):
        T, V, G = self.T, self.V, len(gates)
        acc = self.local(len(batch_rows) * count * G)

        def slot(r, i, gi):
            return ((r * count + i) * G + gi) * V

        for i in range(len(batch_rows) * count * G):
            self.vstore(acc, lambda v, i=i: [i * V + v], lambda v: self.const(0.0))
        rows = len(batch_rows)
        # Emission order sets what stays live across the k body besides the accumulators: the row
        # broadcasts (rows) or the weight vectors (count * G). Keep the smaller set live: with 12
        # accumulators on AVX2 the larger one would spill (measured: B=8 candidate tile, 4 rows x 3 blocks).
        order = ([(i, gi, r) for i in range(count) for gi in range(G) for r in range(rows)]
                 if rows <= count * G else
                 [(i, gi, r) for r in range(rows) for i in range(count) for gi in range(G)])
        with T.serial(*depth) as k:
            hv = [[h_of(b, k, g) for g in gates] for b in batch_rows]
            for i, gi, r in order:
                base = slot(r, i, gi)
                self.vstore(acc, lambda v, base=base: [base + v],
                            lambda v, base=base, h=hv[r][gi], i=i, gi=gi: acc[base + v]
                            + h * self.widen(weight(n0, count, i, k, gi, v)))
        # Every product here is of recurrent weights (z/r(/h) tiles, the candidate partial sums): scale row 1.
        for r, b in enumerate(batch_rows):
            for i in range(count):
                epilogue(b, n0 + i, lambda gi, v, r=r, i=i: self.scaled(acc[slot(r, i, gi) + v], 1, gates[gi],
                                                                        (n0 + i) * V + v))

    def h_masked(self, h, b, k, g):
        if self.spec.recurrent_masks:
            return h * self.buf["recurrent_mask"][g, b, k]
        return h

    # ---------------------------------------------------------------- reset_after=True
    def step_after(self, p, t):
        """One step of part p: z, r, candidate and blend of its own units, from the whole previous state."""
        m, V, s = self.math, self.V, self.spec
        S, xp = self.buf["S"], self.buf["xp"]
        bias = self.buf.get("bias_packed")
        cur, prev = t % 2, (t + 1) % 2
        tt = self.orig_time(t)

        def h_of(b, k, g):
            return self.h_masked(S[prev, b, k], b, k, g)

        def epilogue(b, n, accs):
            def new_state(v):
                u = n * V + v
                h_rec = accs(2, v) + (bias[1, 2, u] if bias is not None else m.zero)
                z = m.gate(xp[tt, b, n, 0, v], accs(0, v))
                r = m.gate(xp[tt, b, n, 1, v], accs(1, v))
                hn = m.blend(z, S[prev, b, u], m.candidate_after(xp[tt, b, n, 2, v], r, h_rec))
                return m.keep_if_masked(self.valid(tt, b), hn, S[prev, b, u]) if s.masked else hn

            self.vstore(S, lambda v: [cur, b, n * V + v], new_state)
            if s.masked:
                O = self.buf["O"]
                old = m.zero if s.zero_output_for_mask else None
                self.vstore(O, lambda v: [cur, b, n * V + v],
                            lambda v: m.keep_if_masked(self.valid(tt, b), S[cur, b, n * V + v],
                                                       old if old is not None else O[prev, b, n * V + v]))

        self.gate_products(p, (0, 1, 2), h_of, epilogue)
        if s.return_sequences and p == 0:  # the previous step's output, complete since the last barrier
            out = self.buf["O" if s.masked else "S"]
            with self.T.If(t >= 1):
                with self.T.Then():
                    self.write_all(lambda b, u, val: self.store_seq(t - 1, b, u, val), lambda b, u: out[prev, b, u])

    def store_seq(self, t, b, u, value):
        idx = [t, b, u] if self.spec.time_major else [b, t, u]
        self.T.buffer_store(self.buf["sequence"], value, idx)

    # ---------------------------------------------------------------- reset_after=False
    def step_before(self, p, t):
        """Iteration t of part p: finish step t-1 (blend, all units), then start step t (own units)."""
        T = self.T
        with T.If(t >= 1):
            with T.Then():
                self.blend_before(p, t - 1)
        with T.If(t < self.steps):
            with T.Then():
                self.gates_before(p, t)
                self.candidate_partial(p, t)

    def gates_before(self, p, t):
        m, V = self.math, self.V
        HL, xp, Z, RH = self.buf["HL"], self.buf["xp"], self.buf["Z"], self.buf["RH"]
        par, tt = t % 2, self.orig_time(t)

        def h_of(b, k, g):
            return self.h_masked(HL[p, b, k], b, k, g)

        def epilogue(b, n, accs):
            self.vstore(Z, lambda v: [par, b, n * V + v], lambda v: m.gate(xp[tt, b, n, 0, v], accs(0, v)))
            self.vstore(RH, lambda v: [b, n * V + v],
                        lambda v: m.gate(xp[tt, b, n, 1, v], accs(1, v)) * self.h_masked(HL[p, b, n * V + v], b,
                                                                                         n * V + v, 2))

        self.gate_products(p, (0, 1), h_of, epilogue)

    def candidate_partial(self, p, t):
        """P[t%2, p] = (r*h)[own units] @ R_h[own units, :] for all output blocks."""
        V, P, RH = self.V, self.buf["P"], self.buf["RH"]
        par = t % 2
        lo, hi = self.parts[p]
        lo, end = lo * V, min(hi * V, self.H)  # own input units (R_h has H rows, not Hp)

        def epilogue(b, n, accs):
            self.vstore(P, lambda v: [par, p, b, n * V + v], lambda v: accs(0, v))

        cand = self.buf["candidate_packed"]  # (H, NB, V): rows of R_h, split over the parts by input unit

        def product(weight):
            self.products((0, self.NB), weight, (2,), lambda b, k, g: RH[b, k], epilogue, (lo, max(lo, end)))

        if not self.sched.candidate_panels:
            product(lambda n0, count, i, k, g, v: cand[k, n0 + i, v])
            return
        cp, T = self.buf["CP"], self.T  # the same weights, block-major (candidate_copy), for long calls
        with T.If(self.panels):
            with T.Then():
                product(lambda n0, count, i, k, g, v: cp[n0 + i, k, v])
            with T.Else():
                product(lambda n0, count, i, k, g, v: cand[k, n0 + i, v])

    def blend_before(self, p, s_):
        """Step s_ for every unit into part p's private state: candidate from all parts' partial sums."""
        T, m, V, spec = self.T, self.math, self.V, self.spec
        HL, xp, Z, P = self.buf["HL"], self.buf["xp"], self.buf["Z"], self.buf["P"]
        par, tt = s_ % 2, self.orig_time(s_)
        for b in range(self.B):
            with T.serial(0, self.NB) as n:
                def new_state(v, b=b, n=n):
                    u = n * V + v
                    rec = P[par, 0, b, u]
                    for q in range(1, self.NT):
                        rec = rec + P[par, q, b, u]
                    hn = m.blend(Z[par, b, u], HL[p, b, u], m.candidate_before(xp[tt, b, n, 2, v], rec))
                    return m.keep_if_masked(self.valid(tt, b), hn, HL[p, b, u]) if spec.masked else hn

                self.vstore(HL, lambda v, b=b, n=n: [p, b, n * V + v], new_state)
                if spec.masked:
                    OL = self.buf["OL"]
                    self.vstore(OL, lambda v, b=b, n=n: [p, b, n * V + v],
                                lambda v, b=b, n=n: m.keep_if_masked(
                                    self.valid(tt, b), HL[p, b, n * V + v],
                                    m.zero if spec.zero_output_for_mask else OL[p, b, n * V + v]))
        if spec.return_sequences and p == 0:
            out = self.buf["OL" if spec.masked else "HL"]
            self.write_all(lambda b, u, val: self.store_seq(s_, b, u, val), lambda b, u: out[p, b, u])

    # ---------------------------------------------------------------- outputs
    def final(self, p):
        """last / state (and, reset_after=True, the last step's output), written by part 0."""
        if p != 0:
            return
        T, spec = self.T, self.spec
        last, state = self.buf["last"], self.buf["state"]
        if self.c.reset_after:
            fin = (self.steps - 1) % 2
            out, states = self.buf["O" if spec.masked else "S"], self.buf["S"]
            if spec.return_sequences:
                self.write_all(lambda b, u, val: self.store_seq(self.steps - 1, b, u, val),
                               lambda b, u: out[fin, b, u])
            self.write_all(lambda b, u, val: T.buffer_store(last, val, [b, u]), lambda b, u: out[fin, b, u])
            self.write_all(lambda b, u, val: T.buffer_store(state, val, [b, u]), lambda b, u: states[fin, b, u])
        else:
            out, states = self.buf["OL" if spec.masked else "HL"], self.buf["HL"]
            self.write_all(lambda b, u, val: T.buffer_store(last, val, [b, u]), lambda b, u: out[0, b, u])
            self.write_all(lambda b, u, val: T.buffer_store(state, val, [b, u]), lambda b, u: states[0, b, u])
