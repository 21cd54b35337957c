#!/bin/bash
# before/after of the memory diet: peak memory at 128^3 (default allocator, one thread) and 64^3 timings
cd /work/main
OUT=/tmp/prof/diet; mkdir -p $OUT
uptime > $OUT/load_start.txt
for rev in before after; do
  if [ $rev = before ]; then PP=$HOME/runs/code_wide/src:.; else PP=src:.; fi
  PYTHONPATH=$PP taskset -c 1 .venv/bin/python -m benchmarks.memory_child swin_factorizer 128 train --threads 1 --steps 1 > $OUT/mem128_$rev.json 2> $OUT/mem128_$rev.err
  uptime >> $OUT/load_mem.txt
done
PYTHONPATH=src:. taskset -c 1 .venv/bin/python -m benchmarks.memory_child segresnet 128 train --threads 1 --steps 1 > $OUT/mem128_segresnet.json 2>&1
uptime >> $OUT/load_mem.txt
.venv/bin/python benchmarks/compare_revisions.py --before 79e3a2a --after HEAD --rounds 2 --core 1 > $OUT/compare.txt 2>&1
uptime > $OUT/load_end.txt
