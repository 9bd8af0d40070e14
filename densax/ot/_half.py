"""Half precision in ``densax.ot``: computed in float32, returned as given.

densax's policy for ``float16`` / ``bfloat16`` inputs: the public wrappers
compute in float32 (half precision has too few digits for log-domain
iterations, sorting-based CDFs or pivoting, and no ``eigh`` kernel) and cast
the floating results back to the input dtype. A shared helper for the whole
library lives in ``densax/_validate.py``; this is the OT side of it.
"""

import jax
import jax.numpy as jnp

__all__ = ["cast", "compute_dtype"]


def compute_dtype(dtype):
    """float32 for a half-precision ``dtype``, else ``dtype`` itself."""
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def cast(tree, dtype):
    """The floating arrays of ``tree`` cast to ``dtype`` (other leaves kept)."""

    def one(v):
        if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.floating):
            return v.astype(dtype)
        return v

    return jax.tree.map(one, tree)
