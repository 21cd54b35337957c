#!/bin/bash
# Transparent huge pages or not: the factorseg command's four malloc settings with and without glibc.malloc.hugetlb=1,
# fresh processes alternating, this checkout. Hippocampus recipe step (20 interleaved steps a run) and the 128^3
# forward / training step, T threads.
#   bash benchmarks/results/session30/thp_ab.sh T ROUNDS OUT
T=$1; N=$2; O=$(realpath -m "$3")
ROOT=$(cd "$(dirname "$0")/../../.." && pwd); cd "$ROOT"
BASE=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.top_pad=268435456:glibc.malloc.arena_max=1
for i in $(seq 1 $N); do
  for h in 0 1; do
    if [ $h = 1 ]; then export GLIBC_TUNABLES=$BASE:glibc.malloc.hugetlb=1; else export GLIBC_TUNABLES=$BASE; fi
    .venv/bin/python -m benchmarks.recipe_step --recipes hippocampus hippocampus_segresnet --repeats 20 --threads $T \
      --out $O/hippocampus_hugetlb${h}_$i | grep "^| hipp" | sed "s/^/hugetlb=$h $i /"
  done
done
for i in $(seq 1 $N); do
  for h in 0 1; do
    if [ $h = 1 ]; then export GLIBC_TUNABLES=$BASE:glibc.malloc.hugetlb=1; else export GLIBC_TUNABLES=$BASE; fi
    .venv/bin/python -m benchmarks.models --sizes 128 --models swin_factorizer segresnet --threads $T --repeats 3 \
      --train-repeats 3 --no-memory --out $O/models128_hugetlb${h}_$i > /dev/null
    grep -o '"table": "[^"]*' $O/models128_hugetlb${h}_$i/models.json | sed 's/\\n/\n/g' | grep "| 128" | sed "s/^/hugetlb=$h $i /"
  done
done
uptime
