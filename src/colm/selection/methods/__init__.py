"""Within-source methods: how a large source's share of the budget is filled from its pool rows.

Every function here answers one question: given the ``n`` pool rows of one large source and its
budget ``b`` (``1 <= b < n``), which ``b`` rows go into the coreset, and with what weights? The
selector runs the one named by ``CoresetConfig.within_source`` on each large source separately
(small sources are kept whole before any of this runs).

- ``random_subset`` (``random``): ``b`` rows uniformly without replacement, the control every other method
  must beat. The coreset mean is an unbiased estimate of the source's pool mean.
- facility location (``facility_location``): the paper's medoids. Medoids are typical rows,
  not a sample: they leave out the large-norm rows that dominate a gradient mean.
- ``mean_match``: the ``b`` rows whose plain mean is closest to the pool mean of the features,
  which is what a training step on the coreset (uniform weights) actually needs.
- ``nnls_match``: mean matching's rows with non-negative loss weights (summing to one) fitted by
  least squares to the pool mean: the best weighted fit on that set (the ceiling lab arm).
- ``cluster_sample``: facility-location clusters used as strata of a random sample.
- ``pps_sample`` (``pps``): inclusion probability proportional to the feature norm, Horvitz-Thompson
  weights: unbiased for the pool sum with less variance than uniform picks when norms vary.
- ``balanced_sample`` (``balanced``): every row keeps the inclusion probability ``b / n`` of a uniform draw
  (so no kind of example is favoured), but the draw is balanced on the leading principal
  components of the features (the cube method): the picks' mean matches the pool's in the
  directions where the rows differ most.

The random ones draw from a ``torch.Generator`` the caller seeds (the selector seeds it from
``(selection seed, step, source)``), so every rank of a distributed run makes the same picks.

Which names exist, and how each is wired in, is ``registry.py`` (name -> needs features?, fill
function, weight rule). Import the functions from their modules (``colm.selection.methods.pps``,
...): this package imports nothing, because ``colm.config`` reads the registry and must not pull
in torch.
"""
