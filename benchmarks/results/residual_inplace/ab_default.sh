#!/bin/bash
# Forward passes, glibc's default allocator, one thread on core 1: 4bbc094 (before) vs the work tree (after),
# alternating, 2 rounds; results under /tmp/prof/ab_residual (copied next to this script afterwards).
cd /work/main
mkdir -p /tmp/prof/ab_residual
uptime > /tmp/prof/ab_residual/load.txt
for r in 0 1; do for rev in before after; do
  if [ $rev = before ]; then T=/tmp/ab_prev; else T=/work/main; fi
  (cd $T && OMP_NUM_THREADS=1 PYTHONPATH=$T/src taskset -c 1 /work/main/.venv/bin/python -m benchmarks.models --models swin_factorizer segresnet --sizes 96 128 --threads 1 --repeats 3 --no-train --no-memory --out /tmp/prof/ab_residual/${rev}_$r > /dev/null 2>&1)
  uptime >> /tmp/prof/ab_residual/load.txt
done; done
echo done >> /tmp/prof/ab_residual/load.txt
