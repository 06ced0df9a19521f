"""r3p preprocessing package: pure operators (arrays in, arrays out)."""

from preprocessing.jit import configure as _configure_jit_cache

_configure_jit_cache()  # numba's on-disk cache in r3p's folder, never site-packages (see preprocessing.jit)
