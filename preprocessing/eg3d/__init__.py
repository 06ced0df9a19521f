"""EG3D (Chan et al., CVPR 2022) re-implemented in plain torch: no custom CUDA ops, CPU and GPU.

Module and parameter names follow the published architecture (NVlabs/eg3d `TriPlaneGenerator`),
so a state dict converted from the official pickle (`pipeline/eg3d_convert.py`) loads strictly.
`layers` holds the StyleGAN2 building blocks, `networks` the mapping and synthesis networks,
`generator` the tri-plane generator with its decoder, renderer and ×4 super-resolution.
"""
