"""Optimal transport: exact 1D and sliced Wasserstein, entropic OT (Sinkhorn).

A short re-export module; the package's layout (one file per part of the
course and of the solver) and the Sinkhorn solver's invariants are written
down once, in ``densax/ot/README.md``:

* :mod:`densax.ot.univariate`: exact transport on the line
  (:func:`wasserstein_1d`, :class:`Coupling1D`);
* :mod:`densax.ot.sliced`: sliced Wasserstein (:func:`sliced_wasserstein`,
  :func:`random_directions`);
* ``densax/ot/sinkhorn.py``: entropic OT (:func:`sinkhorn`,
  :class:`SinkhornConfig`, :func:`transport_plan`, :func:`apply_plan`,
  :func:`to_ott`), built from private modules (geometry, starts,
  accelerations, loop, implicit differentiation);
* :mod:`densax.ot.divergence`: :func:`sinkhorn_divergence`,
  :func:`wasserstein_entropic`;
* the submodules :mod:`densax.ot.exact`, :mod:`densax.ot.gaussian`,
  :mod:`densax.ot.maps`, :mod:`densax.ot.semidiscrete`, :mod:`densax.ot.da`.

The attribute ``densax.ot.sinkhorn`` is the function; the module that
defines it is ``sys.modules["densax.ot.sinkhorn"]``.
"""

__all__ = [
    "Coupling1D",
    "SinkhornConfig",
    "SinkhornDivergenceOutput",
    "SinkhornOutput",
    "apply_plan",
    "random_directions",
    "sinkhorn",
    "sinkhorn_divergence",
    "sliced_wasserstein",
    "to_ott",
    "transport_plan",
    "wasserstein_1d",
    "wasserstein_entropic",
]

# --- Entropic optimal transport (densax/ot/sinkhorn.py, divergence.py) ---
from densax.ot._config import SinkhornConfig
from densax.ot.divergence import (
    SinkhornDivergenceOutput,
    sinkhorn_divergence,
    wasserstein_entropic,
)
from densax.ot.sinkhorn import (
    SinkhornOutput,
    apply_plan,
    sinkhorn,
    to_ott,
    transport_plan,
)
from densax.ot.sliced import random_directions, sliced_wasserstein
from densax.ot.univariate import Coupling1D, wasserstein_1d

# Transport maps, Gaussian and Gaussian-mixture closed forms, semi-discrete OT,
# domain adaptation (issue 22) and exact OT, as public submodules:
# densax.ot.gaussian, .maps, .semidiscrete, .da, .exact.
__all__ += ["da", "exact", "gaussian", "maps", "semidiscrete"]

from densax.ot import da, exact, gaussian, maps, semidiscrete  # noqa: E402

# --- Exact discrete optimal transport (implemented in densax/ot/exact.py) ---
from densax.ot.exact import (  # noqa: E402
    AssignmentOutput,
    ExactOutput,
    assignment,
    emd,
    emd2,
    plan_dense,
    wasserstein_exact,
)

__all__ += [
    "AssignmentOutput",
    "ExactOutput",
    "assignment",
    "emd",
    "emd2",
    "plan_dense",
    "wasserstein_exact",
]
