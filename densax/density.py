"""The density contract: what every density model of densax offers.

A density *model* (``gaussian.Gaussian``, ``gmm.GaussianMixture``, ``kde.KDE``,
later the flows) is a registered pytree whose array fields are leaves and whose
static configuration (covariance type, kernel name) is pytree metadata. Its
module offers ``log_prob(model, x) -> [n]`` and ``sample(key, model, n) ->
[n, d]``, and the model type has the two methods ``model.log_prob(x)`` and
``model.sample(key, n)`` that delegate to them. Consumers (divergences,
metrics, semi-discrete OT...) accept anything with these two methods: the
:class:`Density` protocol, checked at run time by ``isinstance``.

A ``fit`` returns the model itself, or a result whose ``.model`` is the model
next to its diagnostics (``converged``, ``n_iter``, a NaN-padded ``trace``);
:func:`as_model` takes either.

Example:
  >>> import jax
  >>> from densax import density, gaussian
  >>> g = gaussian.fit(jax.random.normal(jax.random.key(0), (100, 2)))
  >>> isinstance(g, density.Density), g.log_prob(g.mean[None]).shape
  (True, (1,))
"""

from typing import Any, Protocol, runtime_checkable

import jax

__all__ = ["Density", "as_model", "check_density"]


@runtime_checkable
class Density(Protocol):
    """Anything with a log-density and a sampler (the densax density contract).

    ``isinstance(obj, Density)`` checks that the two methods exist (not their
    signatures).
    """

    def log_prob(self, x: jax.Array) -> jax.Array:
        """[n] log-densities of the points ``x`` [n, d]."""
        ...

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """[n, d] samples drawn with the PRNG ``key``."""
        ...


def as_model(fitted: Any, name: str | None = None) -> Any:
    """The model of a ``fit`` output: ``fitted.model`` if it has one, else ``fitted``.

    With ``name`` (the argument's name, for the message), a fit result whose
    ``converged`` flag is concrete and false is refused: its model is not the
    fit it claims to be (e.g. a leave-one-out bandwidth collapsing to 0 on
    duplicated points). Pass ``result.model`` to use it anyway. Under a
    transformation the flag is a tracer and is not looked at.

    Raises:
      ValueError: ``name`` given and ``fitted.converged`` is concrete and false.

    Example:
      >>> import jax.numpy as jnp
      >>> from densax import gaussian
      >>> g = gaussian.Gaussian(jnp.zeros(1), jnp.eye(1))
      >>> as_model(g) is g
      True
    """
    model = getattr(fitted, "model", None)
    if model is None:
        return fitted
    converged = getattr(fitted, "converged", None)
    if (
        name is not None
        and converged is not None
        and not isinstance(converged, jax.core.Tracer)
        and not bool(converged)
    ):
        raise ValueError(
            f"{name} is the result of a fit that did not converge "
            f"(converged=False after n_iter={getattr(fitted, 'n_iter', '?')}); "
            f"its model is unreliable. Pass {name}.model to use it anyway."
        )
    return model


def check_density(model: Any, name: str) -> Any:
    """Returns ``model``; raises ``TypeError`` naming ``name`` if it is no Density.

    Example:
      >>> check_density(3.0, "p")
      Traceback (most recent call last):
      ...
      TypeError: p must be a density model (.log_prob(x), .sample(key, n)), got float
    """
    if not isinstance(model, Density):
        raise TypeError(
            f"{name} must be a density model (.log_prob(x), .sample(key, n)), "
            f"got {type(model).__name__}"
        )
    return model
