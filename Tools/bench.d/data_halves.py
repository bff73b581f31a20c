#!/usr/bin/python3
"""The data of an image file (its non-hole regions, found with SEEK_DATA/SEEK_HOLE), split in
two halves: the input of Tools/bench's restore limit.

    data_halves.py IMAGE 0|1    writes that half of the data to stdout
    data_halves.py IMAGE total  prints the number of data bytes

The data regions are taken in offset order and cut where their bytes reach half of the total
(rounded down to 64 KiB), so the two halves together are exactly the image's data."""
import os
import sys

if len(sys.argv) != 3 or sys.argv[2] not in ("0", "1", "total"):
    sys.exit(__doc__.split("\n\n")[1].strip())
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size
regions = []
pos = 0
while pos < end:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:   # ENXIO: only a hole is left
        break
    stop = os.lseek(fd, start, os.SEEK_HOLE)
    regions.append((start, stop))
    pos = stop
total = sum(b - a for a, b in regions)
if sys.argv[2] == "total":
    print(total)
    sys.exit(0)
cut = total // 2 // 65536 * 65536
lo, hi = (0, cut) if sys.argv[2] == "0" else (cut, total)
out = sys.stdout.buffer
done = 0   # data bytes before the current region
step = 1 << 20
for a, b in regions:
    # the part of [a, b) whose data positions fall in [lo, hi)
    s = a + max(0, lo - done)
    e = a + min(b - a, hi - done)
    done += b - a
    while s < e:
        n = min(step, e - s)
        chunk = os.pread(fd, n, s)
        if len(chunk) != n:
            sys.exit(f"error: short read at {s} of {sys.argv[1]}")
        out.write(chunk)
        s += n
    if done >= hi:
        break
out.flush()
