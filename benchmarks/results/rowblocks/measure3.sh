#!/bin/bash
cd /work/main
mkdir -p /tmp/prof/rowblocks
uptime > /tmp/prof/rowblocks/load.txt
.venv/bin/python benchmarks/compare_revisions.py --before f2a3adc252e11d3c3efa67eeccd0e7e860d69002 --after HEAD --rounds 2 --core 1 > /tmp/prof/rowblocks/compare.txt 2>&1
uptime >> /tmp/prof/rowblocks/load.txt
OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python -m benchmarks.recipe_step --recipes hippocampus hippocampus_segresnet "hippocampus:model.widths=[32,64,128,256]" --repeats 8 --threads 1 --tune-allocator --out benchmarks/results/recipe_step_hippocampus > /tmp/prof/rowblocks/recipe.txt 2>&1
uptime >> /tmp/prof/rowblocks/load.txt
echo done >> /tmp/prof/rowblocks/load.txt
