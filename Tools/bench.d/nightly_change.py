#!/usr/bin/python3
"""A seeded "night" of guest writes, sent THROUGH an NBD server (Tessera's filter) so its
change tracker records them.

    nightly_change.py URI SIZE PERCENT SEED [--blocks FILE] [--export-size BYTES]

Writes PERCENT % of SIZE bytes as scattered 4-64 KiB writes (4 KiB aligned, as a guest file
system issues them) at seeded random offsets over the first SIZE bytes of the disk, then
flushes. The payload is seeded random bytes: incompressible, so every tool must store about
what changed. Prints one line: "writes=N bytes=B distinct_64k=C" (C: distinct 64 KiB blocks
touched).

--blocks FILE        also writes the touched 64 KiB block numbers (offset >> 16) to FILE, one
                     per line, ascending.
--export-size BYTES  the export's size when it is larger than SIZE (default SIZE). The writes
                     depend only on SIZE, PERCENT and SEED, so the same night lands at the same
                     offsets with the same payload on a larger disk holding the same data."""
import argparse
import random

import nbd

ap = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip())
ap.add_argument("uri")
ap.add_argument("size", type=int)
ap.add_argument("percent", type=float)
ap.add_argument("seed", type=int)
ap.add_argument("--blocks")
ap.add_argument("--export-size", type=int)
args = ap.parse_args()
uri, size, percent, seed = args.uri, args.size, args.percent, args.seed
export_size = args.export_size if args.export_size is not None else size
if export_size < size:
    ap.error(f"--export-size {export_size} is smaller than SIZE {size}")
rng = random.Random(seed)
target = int(size * percent / 100)
page = 4096
h = nbd.NBD()
h.connect_uri(uri)
if h.get_size() != export_size:
    ap.exit(1, f"error: the export is {h.get_size()} bytes, expected {export_size}\n")
written = writes = 0
blocks = set()
while written < target:
    length = rng.randint(1, 16) * page
    offset = rng.randrange(0, (size - length) // page + 1) * page
    h.pwrite(rng.randbytes(length), offset)
    written += length
    writes += 1
    blocks.update(range(offset >> 16, (offset + length - 1 >> 16) + 1))
h.flush()
h.shutdown()
if args.blocks:
    with open(args.blocks, "w") as f:
        f.writelines(f"{b}\n" for b in sorted(blocks))
print(f"writes={writes} bytes={written} distinct_64k={len(blocks)}")
