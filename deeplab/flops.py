"""The reference model's size and cost, as measured: parameter counts and forward FLOPs at 512x512.

Numbers only, no torch: the Snakefile sizes each training job's time request from them (deeplab.budget) every
time it loads, and importing torch there would add seconds to every `snakemake` call. tests/test_model.py
measures them again from deeplab.model (torch.utils.flop_counter) and fails where they drift.
"""
# Reference parameter counts with 21 classes: (without aux head, with aux head).
PARAMETER_COUNTS = {"r50": (41_226_213, 45_956_602), "r101": (60_218_341, 64_948_730)}
# Reference forward GFLOPs at 512x512 (torch.utils.flop_counter), per (backbone, output stride).
FORWARD_GFLOPS_512 = {("r50", 8): 352.4, ("r50", 16): 119.3, ("r101", 8): 507.5, ("r101", 16): 158.1}
# ... of the auxiliary FCN head on layer3 (training only): 38.7 GFLOP at output stride 8, 9.7 at 16, any backbone.
AUX_GFLOPS_512 = {8: 38.7, 16: 9.7}
