"""Hand rule against tuned knobs of the whole-sequence kernel, interleaved, for every sequence tuning record of a
target (``tuning_logs/<target-id>/sequence_records.json``, the newest line per workload).

    python benchmarks/sequence_tuning_check.py --rounds 20 --out benchmarks/results/<folder>

Each round times the hand rule's kernel and the tuned one back to back (each: the fastest of ~0.3 s of single
100-step calls, as the tuner times them); the table gives both the fastest round and the median round, and the
median of the per-round ratios. Writes ``sequence_tuning.md`` and ``sequence_tuning.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def check(target_name, rounds: int) -> list:
    from tvm_gru import targets
    from tvm_gru.build import records as tuning_db
    from tvm_gru.build import sequence_records as seq_db
    from tvm_gru.ops.config import GRUConfig
    from tvm_gru.ops.sequence import SequenceSpec
    from tvm_gru.tuning.sequence_measure import SequenceBench

    target = targets.resolve(target_name)
    newest = {}
    for rec in seq_db.read_lines(tuning_db.db_dir(target), seq_db.RECORDS):
        if rec["target"] == tuning_db.target_key(target):
            newest[rec["workload"]] = rec
    rows = []
    for key, rec in newest.items():
        # seq-H{units}-I{input}-B{batch}-{dtype}-...: the default-configured layers the benchmark runs
        parts = key.split("-")
        units, input_dim, batch = int(parts[1][1:]), int(parts[2][1:]), int(parts[3][1:])
        spec = SequenceSpec(GRUConfig(units), batch=batch, input_dim=input_dim, lanes=targets.lanes(target, "float32"),
                            return_sequences=False)
        if spec.key() != key:
            print(f"skipping {key}: not a default-configured layer", file=sys.stderr)
            continue
        bench = SequenceBench(spec, target, rec["steps"])
        hand = bench.build(seq_db.schedule_from_json(rec["hand_schedule"]))
        tuned = bench.build(seq_db.schedule_from_json(rec["schedule"]))
        assert bench.check(hand) is None and bench.check(tuned) is None
        h, t = [], []
        for _ in range(rounds):
            h.append(bench.time(hand))
            t.append(bench.time(tuned))
        bench.close()
        rows.append({"shape": f"{batch}x{input_dim}x{units}", "workload": key, "steps": rec["steps"],
                     "record_hand_us": rec["seconds"] * 1e6, "record_tuned_us": rec["tuned_seconds"] * 1e6,
                     "applied": seq_db.chosen_record(spec, target) is not None,
                     "hand_min_us": min(h) * 1e6, "tuned_min_us": min(t) * 1e6,
                     "hand_median_us": statistics.median(h) * 1e6, "tuned_median_us": statistics.median(t) * 1e6,
                     "median_ratio": statistics.median(a / b for a, b in zip(h, t)),
                     "schedule": rec["schedule"], "hand_schedule": rec["hand_schedule"], "load": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows) -> str:
    lines = ["| shape | applied | tuning run: hand / tuned (us) | check, fastest round: hand / tuned (us) | "
             "check, median round: hand / tuned (us) | median per-round speedup | tuned knobs (changed) |",
             "|---|---|---|---|---|---:|---|"]
    for r in rows:
        changed = ", ".join(f"{k}={v}" for k, v in r["schedule"].items() if r["hand_schedule"][k] != v)
        lines.append(f"| {r['shape']} | {'yes' if r['applied'] else 'no'} | {r['record_hand_us']:.0f} / "
                     f"{r['record_tuned_us']:.0f} | {r['hand_min_us']:.0f} / {r['tuned_min_us']:.0f} | "
                     f"{r['hand_median_us']:.0f} / {r['tuned_median_us']:.0f} | {r['median_ratio']:.2f}x | {changed} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=None)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    t0 = time.time()
    rows = check(args.target, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sequence_tuning.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "sequence_tuning.md").write_text(table(rows))
    print(table(rows))
    print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
