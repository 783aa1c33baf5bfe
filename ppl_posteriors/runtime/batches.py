"""Data that come in minibatches: :class:`Batches`, an iterable of batches with the total size N.

A batch is a dict of the model's keyword data arguments (``{"x": (B, K) array,
"y": (B,) array}``); the model is written for one batch
(``numpyro.plate("data", len(x))``). The runtime traces the model on a batch and
multiplies the log-likelihood of every observed (and factor) site inside the batch
plate by N / B, so that each step sees an unbiased estimate of the full-data log
density when the batches are uniform random subsets (a shuffling data loader):

    log p(θ) + (N / B) Σ_{n in batch} log p(y_n | θ, x_n)   ≈   log p(θ) + Σ_{n=1}^{N} log p(y_n | θ, x_n).

Summed over the disjoint batches of one epoch of equal-size batches, these
estimates average exactly to the full-data log-likelihood (and its gradient). This
is the convention of stochastic VI (Hoffman et al. 2013, "Stochastic variational
inference", JMLR 14:1303-1347) and of SG-MCMC (Welling & Teh 2011): the temperature is
1 and N is the size of the whole data set. The same mechanism serves NumPyro's
``numpyro.plate(name, N, subsample_size=B)``, where NumPyro sets the scale itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np

from .._errors import ConfigError, ModelError

__all__ = ["BatchStream", "Batches"]


class Batches:
    """Minibatches of a model's data for methods that take stochastic steps.

    Parameters
    ----------
    source : iterable of dict, or callable returning an iterator of dict
        Each item is one batch: ``{model keyword argument: array}`` with the batch's
        items along the leading axis of the arrays in the plate (numpy or JAX arrays,
        or anything with ``__array__``, e.g. torch tensors on the CPU). It must be
        re-iterable (a list, a ``torch.utils.data.DataLoader``, a function returning a
        fresh generator): methods run several epochs over it.
    num_data : int
        N, the number of items in the whole data set (the plate's full size).
    plate : str, optional
        The plate the batches index. Needed only when more than one plate of an
        observed site has the batch's size.

    Raises
    ------
    ConfigError
        A one-shot iterator or generator object (pass a function that returns one
        instead), ``num_data`` not a positive int, an empty source, or a batch that is
        not a dict of arrays.

    Examples
    --------
    >>> loader = [{"x": X[i:i + 256], "y": y[i:i + 256]} for i in range(0, len(X), 256)]
    >>> pp.infer(model, method=pp.MeanFieldVI(), batches=pp.Batches(loader, num_data=len(X)))

    Batches of unequal size (a final short batch) are allowed; each costs one compiled
    program per distinct shape, and each batch is scaled by N over its own size.
    Results of a batched fit hold the posterior of the global latent sites only: no
    ``log_likelihood`` or ``observed_data`` group (the full data never exist in
    memory), and deterministic sites inside the batch plate are left out.
    """

    def __init__(self, source: Iterable[dict] | Callable[[], Iterator[dict]], num_data: int, *, plate: str | None = None):
        if isinstance(source, Iterator):
            raise ConfigError(
                "pp.Batches(source=...) got a one-shot iterator or generator, but methods run "
                "several epochs; pass a list, a DataLoader, or a function that returns a fresh "
                "iterator (e.g. lambda: make_batches())"
            )
        if not (callable(source) or isinstance(source, Iterable)):
            raise ConfigError(
                f"pp.Batches(source=...) must be an iterable of dicts or a function returning an "
                f"iterator of dicts; got {type(source).__name__}"
            )
        if isinstance(num_data, bool) or not isinstance(num_data, (int, np.integer)) or num_data < 1:
            raise ConfigError(f"pp.Batches(num_data={num_data!r}) must be the data set's size, an int >= 1")
        if plate is not None and not isinstance(plate, str):
            raise ConfigError(f"pp.Batches(plate={plate!r}) must be a plate name (str)")
        self.source, self.num_data, self.plate = source, int(num_data), plate

    def __repr__(self) -> str:
        return f"pp.Batches(num_data={self.num_data}, plate={self.plate!r})"

    def epoch(self) -> Iterator[dict]:
        """One pass over the batches, each checked and converted to numpy arrays."""
        it = self.source() if callable(self.source) and not isinstance(self.source, Iterable) else iter(self.source)
        for i, batch in enumerate(it):
            yield _as_batch(batch, i)

    def cycle(self) -> Iterator[dict]:
        """Batches without end, epoch after epoch (ConfigError if an epoch is empty)."""
        while True:
            empty = True
            for batch in self.epoch():
                empty = False
                yield batch
            if empty:
                raise ConfigError("pp.Batches: the source yielded no batch")

    def first(self) -> dict:
        """The first batch (it fixes the shapes the model is traced with)."""
        return next(self.cycle())

    def log_densities(self, model, *args, jacobian: bool = True, **kwargs):
        """One epoch of :class:`~ppl_posteriors.LogDensity`, one per batch, each with the
        batch plate's log-likelihood scaled by N / B (for experts: streaming curvature,
        custom loops). ``args`` and ``kwargs`` are the model's fixed arguments."""
        from ..density import model_template

        for batch in self.epoch():
            template, arrays = model_template(model, args, merge_batch(model, kwargs, batch), jacobian)
            plate = batch_plate(template, self, batch)
            yield template.bind(arrays, data_scale=(plate, self.num_data))


def _as_batch(batch, i: int) -> dict:
    if not isinstance(batch, dict) or not batch:
        raise ConfigError(
            f"pp.Batches: batch {i} is a {type(batch).__name__}; each batch must be a non-empty "
            "dict of the model's keyword data arguments, e.g. {'x': x_batch, 'y': y_batch}"
        )
    out = {}
    for k, v in batch.items():
        if not isinstance(k, str):
            raise ConfigError(f"pp.Batches: batch {i} has key {k!r}; keys must be the model's argument names")
        if not hasattr(v, "__array__"):
            raise ConfigError(f"pp.Batches: batch {i}[{k!r}] is a {type(v).__name__}, not an array")
        out[k] = v if isinstance(v, (np.ndarray, np.generic, jax.Array)) else np.asarray(v)
    return out


def merge_batch(model, kwargs: dict, batch: dict) -> dict:
    """The model's keyword arguments with a batch's arrays in place (ConfigError naming a key
    that is given twice or that the model does not take)."""
    clash = sorted(set(kwargs) & set(batch))
    if clash:
        raise ConfigError(
            f"pp.Batches: {clash[0]!r} is in every batch and also passed to infer; pass it in one place"
        )
    try:
        params = inspect.signature(model).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for k in batch:
            if k not in names:
                raise ConfigError(
                    f"pp.Batches: batch key {k!r} is not an argument of the model "
                    f"{getattr(model, '__name__', model)!r} (its arguments: {', '.join(names)})"
                )
    return {**kwargs, **batch}


def batch_plate(template, batches: Batches, batch: dict) -> str:
    """The plate that ``batches`` index in this model (ConfigError or ModelError with the fix)."""
    from ..model.sites import SiteKind

    plates = template.trace.plates
    observed_plates = {p for s in template.sites if s.kind is SiteKind.OBSERVED for p in s.plates}
    if batches.plate is not None:
        if batches.plate not in observed_plates:
            raise ConfigError(
                f"pp.Batches(plate={batches.plate!r}): no observed site is inside that plate; "
                f"plates of observed sites: {sorted(observed_plates) or 'none'}"
            )
        plate = batches.plate
    else:
        sizes = {int(np.shape(v)[0]) for v in batch.values() if np.ndim(v) > 0}
        candidates = sorted(p for p in observed_plates if plates[p][0] in sizes)
        if len(candidates) != 1:
            what = "no plate of an observed site has" if not candidates else f"plates {candidates} have"
            raise ConfigError(
                f"pp.Batches: {what} the batch's size; write the model for one batch with "
                "numpyro.plate(name, len(x)) around the observed sites, and name it with "
                "pp.Batches(..., plate=name)"
            )
        plate = candidates[0]
    size, sub = plates[plate]
    if sub != size:
        raise ConfigError(
            f"pp.Batches: plate {plate!r} also subsamples (subsample_size={sub}); use either "
            "batches or subsample_size, not both"
        )
    if size > batches.num_data:
        raise ConfigError(f"pp.Batches: a batch has {size} items but num_data={batches.num_data}")
    local = [s.name for s in template.sites if s.kind is SiteKind.LATENT and plate in s.plates]
    if local:
        raise ModelError(
            f"latent site {local[0]!r} is inside the batch plate {plate!r}: each batch would have "
            "its own parameters, which a stream of batches cannot fit. Keep latent sites outside "
            "the plate (global parameters), or pass the full data without batches."
        )
    return plate



class BatchStream:
    """The batches of one ``pp.infer`` call, turned into (model template, arrays) pairs.

    Traces the model on the first batch, finds the batch plate and checks that no
    latent site is inside it. ``data_scale = (plate, N)`` is what
    :meth:`ModelTemplate.bind` needs to scale each batch by N / B.
    """

    def __init__(self, model, args: tuple, kwargs: dict, jacobian: bool, batches: Batches):
        from ..density import model_template

        if not isinstance(batches, Batches):
            raise ConfigError(
                f"batches= must be pp.Batches(source, num_data=N); got {type(batches).__name__}"
            )
        self.model, self.args, self.kwargs, self.jacobian, self.batches = model, args, kwargs, jacobian, batches
        first = batches.first()
        self.template, self.arrays = model_template(model, args, merge_batch(model, kwargs, first), jacobian)
        self.plate = batch_plate(self.template, batches, first)
        self.data_scale = (self.plate, batches.num_data)

    @property
    def plate_sites(self) -> frozenset:
        """Names of the sites inside the batch plate (their terms are per-batch data terms)."""
        return frozenset(s.name for s in self.template.sites if self.plate in s.plates)

    def stream(self, epochs: int | None = None):
        """(template, arrays) for every batch, epoch after epoch (``epochs=None``: without end)."""
        import itertools

        from ..density import model_template

        checked = {self.template}
        source = self.batches.cycle() if epochs is None else itertools.chain.from_iterable(
            self.batches.epoch() for _ in range(epochs))
        for i, batch in enumerate(source):
            _check_finite(batch, i)
            kwargs = merge_batch(self.model, self.kwargs, batch)
            template, arrays = model_template(self.model, self.args, kwargs, self.jacobian, check_data=False)
            if template not in checked:  # a batch of another shape: same plate, same rules
                if batch_plate(template, self.batches, batch) != self.plate:
                    raise ConfigError(f"pp.Batches: batch {i} indexes another plate than the first batch")
                checked.add(template)
            yield template, arrays


def _check_finite(batch: dict, i: int) -> None:
    for k, v in batch.items():
        a = np.asarray(v)
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            raise ModelError(
                f"pp.Batches: batch {i}[{k!r}] has {int(a.size - np.isfinite(a).sum())} NaN or inf "
                "value(s); drop or impute those rows in the data loader"
            )
