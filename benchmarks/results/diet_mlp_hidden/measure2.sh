#!/bin/bash
cd /work/main
OUT=/tmp/prof/hidden; mkdir -p $OUT
uptime > $OUT/load.txt
for mode in keep recompute; do
  PYTHONPATH=src:. taskset -c 1 .venv/bin/python /tmp/prof/nokeep.py $mode swin_factorizer 128 train --threads 1 --steps 1 > $OUT/mem128_$mode.json 2> $OUT/mem128_$mode.err
  uptime >> $OUT/load.txt
done
for r in 0 1; do for mode in keep recompute; do
  OMP_NUM_THREADS=1 GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456 PYTHONPATH=src:. taskset -c 1 .venv/bin/python /tmp/prof/tmodels.py $mode --models swin_factorizer --sizes 64 --threads 1 --repeats 3 --train-repeats 3 --no-memory --out $OUT/t64_${mode}_$r > /dev/null 2>&1
  uptime >> $OUT/load.txt
done; done
echo done >> $OUT/load.txt
