import runpy, sys
import factorseg.models.layers.mlp as m
m.KEEP_HIDDEN = sys.argv.pop(1) == "keep"
sys.argv[0] = "memory_child"
runpy.run_module("benchmarks.memory_child", run_name="__main__")
