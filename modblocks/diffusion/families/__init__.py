"""One module per model family, each composing the shared stage blocks into its nodes.

The nodes are importable from `modblocks.diffusion`; these modules hold how they are made.
"""
