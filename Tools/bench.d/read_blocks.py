#!/usr/bin/python3
"""Reads exactly the listed 64 KiB blocks of an image file, in offset order: the read half of
Tools/bench's changed-block limit.

    read_blocks.py IMAGE BLOCKS [OUT]

BLOCKS holds block numbers (offset >> 16), one per line, as nightly_change.py --blocks
writes them. Each block is one 64 KiB pread (queue depth 1, ascending offsets, no hints).
Without OUT the bytes are dropped (what Tools/bench times, page cache dropped first); with
OUT they are written back to back into OUT (the input of the limit's compression step).
Prints one line: "blocks=N bytes=B"."""
import os
import sys

if len(sys.argv) not in (3, 4):
    sys.exit(__doc__.split("\n\n")[1].strip())
block = 65536
with open(sys.argv[2]) as f:
    numbers = sorted(int(line) for line in f if line.strip())
fd = os.open(sys.argv[1], os.O_RDONLY)
out = open(sys.argv[3], "wb") if len(sys.argv) == 4 else None
buf = bytearray(block)
total = 0
for n in numbers:
    got = os.preadv(fd, [buf], n * block)
    if got != block:
        sys.exit(f"error: block {n} of {sys.argv[1]}: read {got} bytes, expected {block}")
    total += got
    if out:
        out.write(buf)
if out:
    out.close()
os.close(fd)
print(f"blocks={len(numbers)} bytes={total}")
