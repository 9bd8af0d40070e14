"""Gaussian mixture models fitted by Expectation-Maximisation.

Everything a scikit-learn ``GaussianMixture`` user reaches for, as pure
functions over a :class:`GaussianMixture` pytree (a density model of
:mod:`densax.density`): the four covariance types (``full``, ``tied``,
``diag``, ``spherical``), four initialisations, the textbook steps
:func:`e_step` / :func:`m_step` / :func:`em_step`, :func:`fit` (the whole loop
in one ``lax.while_loop`` of a fast engine, ``n_init`` restarts in parallel
under ``vmap``, reverse-mode derivatives by implicit differentiation at the
fixed point), :func:`fit_stream` and :func:`fit_online` (EM on data read chunk
by chunk, never in memory at once), :func:`log_prob` (scikit-learn's
``score_samples``), :func:`predict_proba`, :func:`predict`, :func:`sample`,
:func:`sample_with_labels`, :func:`bic`, :func:`aic`. Per-sample weights and
data-parallel EM (``axis_name``) come with every estimation step.

The package: ``_model.py`` (the pytree, constructors, evaluation),
``_steps.py`` (the textbook steps), ``_init.py`` and ``_kmeans.py`` (the
initialisations), ``_engine.py`` (the fast EM iteration of :func:`fit`),
``_stream.py`` (EM on a stream of chunks: :func:`fit_stream`, one pass
per iteration with the engine's statistics and M-step, and online EM,
:func:`fit_online`), ``_fit.py`` (the loop, restarts, the CPU-only ``vmap`` rule
``_sequential_on_cpu``: the one platform-dependent seam), ``_implicit.py``
(derivatives at the fixed point).

How :func:`fit` computes the EM iteration (the engine). A component's
weighted log-density is a quadratic polynomial in local coordinates ``z`` of
``x``::

  log w_k + log N(x | mu_k, P_k^-1) = phi(z) @ coef_k,
  phi(z) = [1, z, (z_i z_j)_{i<=j}]   ([1, z, z**2] diag, [1, z, |z|^2] spherical),

so the E-step is one ``[n, F] @ [F, K]`` matmul (``F = 1 + d + d(d+1)/2``)
and a ``logsumexp``, and the M-step's sufficient statistics (the counts,
first and second moments of every component) are one ``[K, n] @ [n, F]``
matmul. No ``[n, K, d]`` or ``[n, K, d, d]`` array is formed, and the flops
are about half those of the direct form ``|U_k^T (x - mu_k)|^2``.

Expanding the quadratic form cancels terms of size ``|z|^2 ||P_k||`` down to
the size of the result: with one origin for all samples (the data mean),
float32 would lose as many digits as the log10 of the squared Mahalanobis
distance from that origin to the samples, which is catastrophic for narrow
or elongated components far from the mean (see the documentation's benchmark
notes for the error this causes).
So, once per fit, the samples are cut into cells (k-means with 2K cells,
seeded by k-means++ on a subsample; the cells depend on the data only, so
every restart shares them) and each sample takes the coordinates of its
cell: ``z = L_c^-1 (x - mean_c)`` with ``L_c`` the Cholesky factor of the
cell's covariance (full/tied; diag/spherical need no whitening). The samples
are sorted by cell into blocks of up to 1024 rows, one cell per block, so the
steps are batched matmuls with each block's coefficients, and the M-step
moves the per-cell statistics back to data coordinates exactly. One EM
iteration of :func:`fit` runs the E-step and the M-step's matmul chunk by
chunk (about 4096 rows, which stay in cache between the two), skipping the
chunks of padding. Every term then has the size of a Mahalanobis distance
within a cell, so the engine's float32 accuracy is that of scikit-learn's
float32 direct form (the measured errors are in the documentation's benchmark
notes). :func:`log_prob`, :func:`predict_proba`, :func:`predict` and the public
steps use the direct form; a test checks that the engine's iteration and
:func:`em_step` agree to rounding.

Degenerate cases. ``reg_covar`` is added to every covariance's diagonal, as in
scikit-learn. A component that loses all its points keeps a weight of about
``10 eps / n``, mean 0 and covariance ``reg_covar I`` (as in scikit-learn),
and stays finite. Variances of ``diag``/``spherical`` components are clipped
at zero before ``reg_covar`` is added (rounding can make a vanishing variance
slightly negative). A ``full``/``tied`` covariance whose Cholesky
factorisation fails after ``reg_covar`` (only through rounding, e.g. a
float32 component collapsed on duplicate points) gets ``d eps`` times the
size of its second moments more on its diagonal. With ``reg_covar > 0`` EM is
a penalised EM whose log-likelihood can dip by rounding-sized amounts near
convergence (scikit-learn's too). When the log-likelihood becomes non-finite
(NaN or inf in ``x`` under a transformation, ``reg_covar=0`` with a
collapsed component) :func:`fit` stops and reports ``converged=False``.

References:
  Dempster, Laird and Rubin (1977), Maximum likelihood from incomplete data
  via the EM algorithm, JRSS B 39(1).
  Bishop (2006), Pattern Recognition and Machine Learning, section 9.2.
  Arthur and Vassilvitskii (2007), k-means++: the advantages of careful
  seeding, SODA.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from densax import gmm
  >>> k1, k2 = jax.random.split(jax.random.key(0))
  >>> x = jnp.concatenate([jax.random.normal(k1, (200, 2)) - 3.0,
  ...                      jax.random.normal(k2, (200, 2)) + 3.0])
  >>> result = gmm.fit(jax.random.key(1), x, 2)
  >>> bool(result.converged), jnp.sort(result.model.means[:, 0]).round(0).tolist()
  (True, [-3.0, 3.0])
"""

from densax.gmm._fit import DIFFERENTIATION, FitResult, fit
from densax.gmm._init import INIT_METHODS, init
from densax.gmm._model import (
    COVARIANCE_TYPES,
    GaussianMixture,
    aic,
    bic,
    from_covariances,
    from_precisions,
    log_prob,
    predict,
    predict_proba,
    sample,
    sample_with_labels,
)
from densax.gmm._steps import e_step, em_step, m_step
from densax.gmm._stream import fit_online, fit_stream

__all__ = [
    "COVARIANCE_TYPES",
    "DIFFERENTIATION",
    "INIT_METHODS",
    "FitResult",
    "GaussianMixture",
    "aic",
    "bic",
    "e_step",
    "em_step",
    "fit",
    "fit_online",
    "fit_stream",
    "from_covariances",
    "from_precisions",
    "init",
    "log_prob",
    "m_step",
    "predict",
    "predict_proba",
    "sample",
    "sample_with_labels",
]
