import runpy, sys
import factorseg.models.layers.mlp as m
m.KEEP_HIDDEN = sys.argv.pop(1) == "keep"
runpy.run_module("benchmarks.models", run_name="__main__")
