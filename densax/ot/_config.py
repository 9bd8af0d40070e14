"""The solver's options: :class:`SinkhornConfig` and the one resolver of "auto".

Every option that chooses an algorithm is a value, a field of the frozen,
hashable :class:`SinkhornConfig` shared by ``sinkhorn``,
``sinkhorn_divergence`` and ``wasserstein_entropic``. :func:`resolve` holds
every ``"auto"`` rule (the start, the annealing, the storage, the blocks and
the cached kernel), from the problem's sizes and cost; it returns the options
as resolved, which the output records in its ``config`` field, and the static
:class:`CoreConfig` of the jitted core.
"""

import dataclasses
import functools
from typing import Any

import jax

from densax import _validate
from densax.ot._acceleration import Annealing, Relaxation
from densax.ot._geometry import is_sq_euclidean

__all__ = ["CoreConfig", "SinkhornConfig", "merge", "resolve"]

_DIFFERENTIATION = ("envelope", "implicit", "unroll")
_INITIALIZERS = ("auto", "gaussian", "zero", "warm")
_AUTO_EPSILON_SCALING = 0.5  # epsilon_scaling="auto" from the zero start
# storage="auto": dense up to this many cost entries (squared Euclidean:
# above it, one in-cache matrix product per block beats reading a stored
# matrix; other costs: the stored matrix is kept up to 64 MB in float32) ...
_AUTO_DENSE_SQEUCLIDEAN = 1 << 16
_AUTO_DENSE_OTHER = 1 << 24
# ... and blocks of about this many entries (4 MB in float32) above it, with
# at least 64 rows for the squared Euclidean cost: its block product and
# exponentials cost 1.2 ns an entry with 10 rows, 0.26 ns with 64 (m = 10^5).
_AUTO_BLOCK_ENTRIES = 1 << 20
_AUTO_MIN_ROWS_SQEUCLIDEAN = 64
# "auto" caches the kernel exp((f + g - C) / eps) up to this many entries
# (128 MB in float32); "dense" and "kernel" always do, "online" never.
_AUTO_KERNEL_ENTRIES = 1 << 25
_UNLIMITED = 1 << 62
# The stall window of an accelerated path: max_iter / 4 iterations, at
# least 100 (see CoreConfig.stall). At tiny epsilon an accelerated path can
# crawl for tens of iterations before it converges fast; a path that gains
# less than 2 % in a quarter of the budget is not going to.
_STALL_MIN = 100
_STALL_PARTS = 4


@dataclasses.dataclass(frozen=True)
class CoreConfig:
    """Static options of the solver (hashable: part of the jit cache key)."""

    max_iter: int
    min_iter: int
    epsilon_scaling: float | None
    relaxation: float | None  # None: adaptive
    block_size: int | None  # None: dense (the cost matrix is stored)
    differentiation: str
    axis_name: Any
    initializer: str  # "gaussian", "zero" or "warm" (see resolve)
    # Cache the kernel (stabilised scaling, see Kernel) of problems with at
    # most this many entries (per device); 0: never.
    kernel: int = 0
    # An accelerated path (Gaussian or warm start, annealing, relaxation)
    # that makes no progress at the target epsilon for this many iterations
    # stops, and the plain zero-start iteration takes the rest of the
    # budget (_solve.solve_and_state); 0: never (plain paths, fixed
    # iteration counts, unrolled gradients).
    stall: int = 0

    @property
    def fixed(self) -> bool:
        """Exactly ``max_iter`` iterations: the loop is a ``scan``."""
        return self.min_iter == self.max_iter

    @property
    def annealing(self) -> Annealing:
        """The epsilon-scaling rule (``_acceleration.Annealing``)."""
        return Annealing(self.epsilon_scaling, self.max_iter)

    @property
    def over_relaxation(self) -> Relaxation:
        """The relaxation rule (``_acceleration.Relaxation``)."""
        return Relaxation(self.relaxation)


_STORAGES = ("auto", "dense", "online", "kernel")


@dataclasses.dataclass(frozen=True)
class SinkhornConfig:
    """Options of the Sinkhorn solver, shared by every entropic function.

    A frozen, hashable value (static under ``jit``): :func:`sinkhorn`,
    :func:`sinkhorn_divergence` and :func:`wasserstein_entropic` take it as
    ``config=``, or its fields as keywords (``max_iter=50`` is short for
    ``config=SinkhornConfig(max_iter=50)``; keywords given with a ``config``
    replace its fields). Every ``"auto"`` is resolved in one place, from the
    problem's sizes and cost, and the output's ``config`` field holds the
    options as resolved (e.g. ``storage="dense"``, ``initializer="gaussian"``).

    Attributes:
      max_iter: iteration budget (annealing iterations included); also the
        length of the output's ``trace``.
      min_iter: iterations run before convergence is tested. With
        ``min_iter == max_iter`` exactly ``max_iter`` iterations run, as a
        ``scan``: a predictable cost, and under ``vmap`` a batch no longer
        runs at its slowest member's pace (``converged`` still reports the
        final error against ``tol``).
      initializer: the potentials the iterations start from. ``"gaussian"``
        (squared Euclidean cost between points only): those of the entropic
        problem between the Gaussians fitted to ``(x, a)`` and ``(y, b)``, in
        closed form (Janati et al. 2020; ott-jax's ``GaussianInitializer``
        takes the unregularised ones), at the cost of two ``d x d``
        eigendecompositions (half-precision inputs are computed in float32).
        Near-Gaussian clouds start close to the solution. ``"zero"``:
        ``f = epsilon log a``, zero but for the weights (as ott-jax's
        default). ``"auto"`` (default): ``"gaussian"`` for the squared
        Euclidean cost when ``d^3 <= n m``, else ``"zero"``; ``"warm"`` when
        ``f_init`` is given (resolved only). Either way the first ``g`` is a
        lower bound of the c-transform of ``f``, so that no exponent of the
        first pass is positive.
      epsilon_scaling: ``"auto"`` (default): no annealing from the Gaussian
        or a warm start, which already hold the large scales that annealing
        would resolve, and ``1/2`` from the zero start. ``q`` in ``(0, 1)``:
        anneal from about the cost's spread ``sigma`` (its standard deviation
        under ``a ⊗ b``, which a constant added to the cost leaves unchanged)
        down to ``epsilon``, one iteration per level (GeomLoss): the levels
        are ``epsilon / q^L, ..., epsilon / q, epsilon`` with ``L`` the
        nearest integer to ``log(sigma / epsilon) / log(1 / q)``, or 0 when
        that is below 2, so that a cached kernel passes from one level to
        the next by the integer power ``1 / q`` when it is one (as for
        ``1/2``). ``None`` disables it.
      relaxation: ``"adaptive"`` (default: plain Sinkhorn while annealing; at
        ``epsilon``, over-relaxation ``omega`` starting from the optimum for
        a plain rate ``1 - 4 epsilon / s`` (plain without annealing levels)
        and raised as the observed convergence rate requires, never past what
        the error history supports), or a fixed ``omega`` in ``(0, 2)`` (1 is
        plain Sinkhorn).
      storage: where the cost lives. ``"dense"``: the ``[n, m]`` cost matrix
        is stored once (and its transpose) and the kernel
        ``exp((f + g - C) / epsilon)`` cached (stabilised scaling: a pass is
        a matrix-vector product). ``"online"``: the cost is recomputed by
        blocks of ``block_size`` rows at every pass (memory
        ``O((n + m) d + block_size max(n, m))``, no cached kernel; an
        iteration is one pass over stripes of at most ``block_size`` columns,
        narrower when that keeps a stripe near ``2^21`` entries).
        ``"kernel"`` (squared Euclidean cost): online, but the ``[n, m]``
        kernel is cached, built by blocks of matrix products. ``"auto"``
        (default): dense up to ``2^16`` entries for the squared Euclidean
        cost (whose online blocks are one matrix product) or ``2^24`` for
        other costs, above that ``"kernel"`` up to ``2^25`` entries (128 MB
        in float32) per problem for the squared Euclidean cost and
        ``"online"`` otherwise; a cost matrix is always dense. No kernel is
        cached with ``differentiation="unroll"``. Under ``vmap`` each
        problem has its own kernel: use ``"online"`` for large batches.
      block_size: rows per block of the online passes; ``None`` (default):
        about ``2^20`` entries per block (at least 64 rows for the squared
        Euclidean cost, 8 otherwise, at most 1024). Unused when dense.
      differentiation: how gradients flow through the solution.
        ``"envelope"`` (default): ``reg_cost`` is differentiated w.r.t. the
        points (or cost matrix), weights and ``epsilon`` with the potentials
        held fixed (Danskin's theorem; exact at the optimum, costs one
        pass); differentiating anything that depends on the potentials
        raises a ``ValueError``. ``"implicit"``: the potentials are
        differentiated by the implicit function theorem (a linear solve,
        conjugate gradients or a direct solve for ``m <= 1024`` when dense),
        so are ``transport_cost`` and plans. ``"unroll"``: backpropagation
        through the iterations (runs ``max_iter`` iterations, the state
        frozen after convergence; memory ``O((n + m) max_iter)``), for
        comparison.

    Fallback: the accelerations (the Gaussian or a warm start, annealing,
    relaxation) change the path to the fixed point, not the point. Where an
    accelerated path stalls (its error at ``epsilon`` falls by less than 2 %
    in ``max(100, max_iter / 4)`` iterations, after ``min_iter``), the plain
    iteration from the zero start takes the rest of the budget, inside the
    same jitted program, and the result with the smaller error is returned;
    ``SinkhornOutput.fallback`` says whether the plain path's was. Not with
    ``min_iter == max_iter`` or ``differentiation="unroll"``.

    Raises:
      TypeError, ValueError: a field of the wrong type or value (named).

    Example:
      >>> import densax
      >>> cfg = densax.ot.SinkhornConfig(max_iter=50, relaxation=1.0)
      >>> cfg.max_iter, cfg.storage, hash(cfg) == hash(cfg)
      (50, 'auto', True)
    """

    max_iter: int = 2000
    min_iter: int = 0
    initializer: str = "auto"
    epsilon_scaling: float | str | None = "auto"
    relaxation: float | str = "adaptive"
    storage: str = "auto"
    block_size: int | None = None
    differentiation: str = "envelope"

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        max_iter = _validate.check_int(self.max_iter, "max_iter", minimum=1)
        min_iter = _validate.check_int(self.min_iter, "min_iter", minimum=0)
        if min_iter > max_iter:
            raise ValueError(f"min_iter ({min_iter}) must be <= max_iter ({max_iter})")
        set_("max_iter", max_iter)
        set_("min_iter", min_iter)
        _validate.check_choice(self.initializer, "initializer", _INITIALIZERS)
        scaling = self.epsilon_scaling
        if isinstance(scaling, str):
            _validate.check_choice(scaling, "epsilon_scaling", ("auto",))
        elif scaling is not None:
            if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
                raise TypeError(
                    "epsilon_scaling must be 'auto', a float in (0, 1) or None, "
                    f"got {type(scaling).__name__}"
                )
            if not 0.0 < scaling < 1.0:
                raise ValueError(
                    f"epsilon_scaling must be in (0, 1) or None, got {scaling}"
                )
            set_("epsilon_scaling", float(scaling))
        relaxation = self.relaxation
        if isinstance(relaxation, str):
            _validate.check_choice(relaxation, "relaxation", ("adaptive",))
        elif isinstance(relaxation, bool) or not isinstance(relaxation, (int, float)):
            raise TypeError(
                "relaxation must be 'adaptive' or a float in (0, 2), got "
                f"{type(relaxation).__name__}"
            )
        elif not 0.0 < relaxation < 2.0:
            raise ValueError(f"relaxation must be in (0, 2), got {relaxation}")
        else:
            set_("relaxation", float(relaxation))
        _validate.check_choice(self.storage, "storage", _STORAGES)
        if self.block_size is not None:
            set_(
                "block_size",
                _validate.check_int(self.block_size, "block_size", minimum=1),
            )
        _validate.check_choice(
            self.differentiation, "differentiation", _DIFFERENTIATION
        )


jax.tree_util.register_static(SinkhornConfig)


def merge(config: SinkhornConfig | None, options: dict) -> SinkhornConfig:
    """``config`` (default options when None) with the keyword ``options``."""
    if config is None:
        return SinkhornConfig(**options)
    if not isinstance(config, SinkhornConfig):
        raise TypeError(f"config must be a SinkhornConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **options) if options else config


def _auto_rows(n: int, m: int, sq: bool) -> int:
    rows = _AUTO_MIN_ROWS_SQEUCLIDEAN if sq else 8
    return int(min(max(_AUTO_BLOCK_ENTRIES // max(n, m), rows), 1024))


def resolve(
    config: SinkhornConfig,
    *,
    cost_fn,
    n: int,
    m: int,
    d: int,
    matrix: bool = False,
    warm: bool = False,
    axis_name: Any = None,
    batch_size: int | None = None,
) -> tuple[SinkhornConfig, CoreConfig]:
    """Every ``"auto"`` rule of the solver, in one place.

    Returns the options as resolved (what the output records) and the static
    configuration of the jitted core. ``n, m, d``: the problem's local sizes
    (``d = 0`` for a cost matrix, ``matrix=True``); ``warm``: ``f_init`` is
    given; ``batch_size``: that of an ott-jax ``PointCloud``, which makes
    ``storage="auto"`` online.
    """
    sq = not matrix and is_sq_euclidean(cost_fn)
    # The start.
    init = config.initializer
    if warm:
        if init not in ("auto", "warm"):
            raise ValueError(
                f"initializer={init!r} conflicts with f_init (a warm start); "
                "leave initializer='auto'"
            )
        init = "warm"
    elif init == "warm":
        raise ValueError("initializer='warm' needs f_init")
    elif init == "gaussian" and not sq:
        what = "a cost matrix" if matrix else type(cost_fn).__name__
        raise ValueError(
            "initializer='gaussian' needs the squared Euclidean cost between "
            f"points, got {what}"
        )
    elif init == "auto":
        init = "gaussian" if sq and d**3 <= n * m else "zero"
    scaling = config.epsilon_scaling
    if scaling == "auto":
        scaling = None if init in ("gaussian", "warm") else _AUTO_EPSILON_SCALING
    # The storage, the blocks and the cached kernel.
    storage, block = config.storage, config.block_size
    unroll = config.differentiation == "unroll"
    if matrix and storage not in ("auto", "dense"):
        raise ValueError(
            f"a cost matrix is stored: storage must be 'auto' or 'dense', got "
            f"{storage!r}"
        )
    if storage == "kernel" and not sq:
        raise ValueError(
            "storage='kernel' builds the kernel by matrix products: it needs the "
            "squared Euclidean cost between points"
        )
    kernel = _UNLIMITED
    if storage == "auto" and batch_size is not None:
        storage, block = "online", block or batch_size
    if storage == "auto":
        limit = _AUTO_DENSE_SQEUCLIDEAN if sq else _AUTO_DENSE_OTHER
        if matrix or n * m <= limit:
            storage = "dense"
        else:
            kernel = _AUTO_KERNEL_ENTRIES if sq else 0
            cached = n * m <= kernel and not unroll
            storage = "kernel" if cached else "online"
    elif storage == "online":
        kernel = 0
    if storage == "dense":
        block = None
    elif block is None:
        block = _auto_rows(n, m, sq)
    if unroll:
        kernel = 0
        storage = "online" if storage == "kernel" else storage
    relaxation = None if config.relaxation == "adaptive" else config.relaxation
    accelerated = init != "zero" or scaling is not None or relaxation != 1.0
    plain_loop = config.min_iter == config.max_iter or unroll
    stall = 0
    if accelerated and not plain_loop:
        stall = max(_STALL_MIN, config.max_iter // _STALL_PARTS)
    cfg = CoreConfig(
        max_iter=config.max_iter,
        min_iter=config.min_iter,
        epsilon_scaling=scaling,
        relaxation=relaxation,
        block_size=block,
        differentiation=config.differentiation,
        axis_name=axis_name,
        initializer=init,
        kernel=kernel,
        stall=stall,
    )
    record = dataclasses.replace(
        config,
        initializer=init,
        epsilon_scaling=scaling,
        storage=storage,
        block_size=block,
    )
    return record, cfg
