#!/usr/bin/python3
"""A seeded "night" of guest writes, sent THROUGH an NBD server (Tessera's filter) so its
change tracker records them.

    nightly_change.py URI SIZE PERCENT SEED

Writes PERCENT % of SIZE bytes as scattered 4-64 KiB writes (4 KiB aligned, as a guest file
system issues them) at seeded random offsets over the whole disk, then flushes. The payload
is seeded random bytes: incompressible, so every tool must store about what changed. Prints
one line: "writes=N bytes=B distinct_64k=C" (C: distinct 64 KiB blocks touched)."""
import random
import sys

import nbd

uri, size, percent, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
target = int(size * percent / 100)
page = 4096
h = nbd.NBD()
h.connect_uri(uri)
if h.get_size() != size:
    sys.exit(f"error: the export is {h.get_size()} bytes, expected {size}")
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
print(f"writes={writes} bytes={written} distinct_64k={len(blocks)}")
