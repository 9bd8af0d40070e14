"""densax: density estimation, optimal transport and generative models in JAX.

Every topic lives in its own small module, imported on first use::

    import densax
    densax.gmm.fit(key, x, 3)          # Gaussian mixtures by EM
    densax.kde.fit(x).log_prob(q)      # kernel density estimation
    densax.ot.sinkhorn(x, y)           # entropic optimal transport

Modules: ``density`` (the contract every density model follows),
``gaussian``, ``gmm``, ``kde``, ``divergences``, ``ot``, ``datasets``,
``metrics``, ``image_metrics`` and the ``generative`` package.
"""

import importlib

__version__ = "0.2.0"

_SUBMODULES = (
    "cluster",
    "datasets",
    "density",
    "divergences",
    "gaussian",
    "generative",
    "gmm",
    "image_metrics",
    "kde",
    "metrics",
    "ot",
)

__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
