"""Shared set-up of this folder's block scripts: the hippocampus recipe's first full-resolution Factorizer block
in training mode and a channels-last input of its size (4 x 16 x 40 x 56 x 40) that requires gradients."""
import sys
sys.path[:0] = ["src", "."]
import torch
from benchmarks.recipe_step import recipe_model


def block_and_input(threads: int):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m, _ = recipe_model("hippocampus", 1, 3)
    b = m.encoder[0][0]
    m.train()
    x = torch.randn(4, 16, 40, 56, 40).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    return b, x
