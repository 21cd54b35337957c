#!/bin/bash
# Peak memory (VmHWM) of 5 training steps at 128^3, two threads, the command's four malloc settings with and without
# glibc.malloc.hugetlb=1, one fresh process each.   bash benchmarks/results/session30/thp_memory.sh
ROOT=$(cd "$(dirname "$0")/../../.." && pwd); cd "$ROOT"
BASE=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.top_pad=268435456:glibc.malloc.arena_max=1
for model in segresnet swin_factorizer; do
  for h in 0 1; do
    if [ $h = 1 ]; then T=$BASE:glibc.malloc.hugetlb=1; else T=$BASE; fi
    echo "$model hugetlb=$h $(GLIBC_TUNABLES=$T PYTHONPATH=src:. .venv/bin/python -m benchmarks.memory_child $model 128 train --threads 2 --steps 5 | grep -o '"peak_mib": [0-9.]*')"
  done
done
uptime
