#!/bin/bash
cd /work/main
mkdir -p /tmp/prof/ab_default
uptime > /tmp/prof/ab_default/load.txt
for r in 0 1; do for rev in before after; do
  if [ $rev = before ]; then T=/tmp/ab_prev; else T=/work/main; fi
  (cd $T && OMP_NUM_THREADS=1 PYTHONPATH=$T/src taskset -c 1 /work/main/.venv/bin/python -m benchmarks.models --models swin_factorizer segresnet --sizes 64 96 --threads 1 --repeats 5 --train-repeats 1 --no-memory --out /tmp/prof/ab_default/${rev}_$r > /dev/null 2>&1)
  uptime >> /tmp/prof/ab_default/load.txt
done; done
echo done >> /tmp/prof/ab_default/load.txt
