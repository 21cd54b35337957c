"""The layers of the Factorizer, one concept per file; the network blocks built from them are in
:mod:`factorseg.models.blocks`.

* ``nmf.py``: the differentiable NMF layer (``NMF``, its settings ``NMFConfig``): MU and HALS
  solvers, the initialisations, full or last-k gradients, the Gram-form rank-1 HALS, ``set_nmf_iters``.
* ``windows.py``: the window matricize (global, local, shifted windows), the window-major gather,
  the sub-block layout with its per-window sums, and the index tables they use.
* ``mixer.py``: the NMF mixer (``NMFMixer``) with its sub-block and window paths, the ``path`` switch
  and ``with_mixer_path``.
* ``mlp.py``: the per-voxel MLP and its memory-saving residual branch for training.
* ``dropout.py``: the CPU dropout kernel and its keep-masks.
* ``norm.py``: the channel LayerNorm and the channels-last instance norm.
* ``conv.py``: convolutions of any spatial rank, channels-last memory, 1x1 convolutions as matrices (a
  head to channels-first, a skip connection's product added into a map in place), the stem's convolution,
  the transposed convolution with a fast weight gradient.
* ``fastpath.py``: when the fast kernels may run (graph capture, in-place safety).
* ``pool.py``: the layers' map-sized CPU buffers, kept for reuse where glibc's default allocator would
  page-fault them anew every step.
"""
