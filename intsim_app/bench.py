"""``intsim bench``: the command over the integer side's measurements (:mod:`intsim.bench`)
and, with ``--model``, the float side's PyTorch baseline (:mod:`converters.modelbench`)."""
from __future__ import annotations

import argparse
import json
import sys

from intsim.bench import collect, format_table, fused_status_row, golden_bench, gpu_bench


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="intsim bench",
                                description="integer matmul core vs float32 BLAS")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    p.add_argument("--repeats", type=int, default=5, help="least timed runs per measurement")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of runs per measurement (default 1, quick 0)")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="also time this integer model file against PyTorch fp32 on its float "
                        "checkpoint (decode, prefill, file size, peak memory)")
    a = p.parse_args(argv)
    if a.model:
        from intsim.modelfile import read_header
        read_header(a.model)     # a missing or unreadable file is named now, not after the timing
    r = collect(quick=a.quick, repeats=max(1, a.repeats), min_time=a.min_time)
    if a.model:
        from converters.modelbench import model_bench   # the float side: PyTorch baseline
        r.update(model_bench(a.model))
        r.update(fused_status_row(a.model))
        r.update(golden_bench(a.model))
        r.update(gpu_bench(a.model))      # only where a GPU is present
    print(json.dumps(r) if a.json else format_table(r))
    return 0 if r["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
