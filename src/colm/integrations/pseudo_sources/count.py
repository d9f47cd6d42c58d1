"""How many pseudo-sources: the number the user gave, or 'auto'.

'auto' is ``round(n ** (1/3))`` for ``n`` training rows: more data holds more distinguishable
groups, but slowly (25,000 rows -> 29, 1,000,000 -> 100). It is capped at a quarter of the pool:
selection within a cluster needs several of its rows in a pool to choose among, and with more
clusters than that an average cluster has fewer than 4 rows per pool, so the per-source budgets
degenerate into keeping or dropping single rows. At least 2.
"""
from __future__ import annotations

#: Rows an average cluster should have in one pool under 'auto'.
ROWS_PER_CLUSTER_IN_POOL = 4


def auto_clusters(n_rows: int, pool_size: int) -> int:
    by_data = round(n_rows ** (1.0 / 3.0))
    return max(2, min(by_data, pool_size // ROWS_PER_CLUSTER_IN_POOL))


def resolve_clusters(setting: int | str, n_rows: int, pool_size: int) -> int:
    """The number of clusters for ``CoresetConfig.pseudo_sources`` = ``setting`` on ``n_rows``
    rows that can be trained (at least one supervised token).

    Raises:
        ValueError: naming ``pseudo_sources``, when there are fewer rows than clusters.
    """
    k = auto_clusters(n_rows, pool_size) if setting == "auto" else int(setting)
    if n_rows < k:
        raise ValueError(
            f"CoresetConfig.pseudo_sources = {setting!r} asks for {k} clusters, but the training set "
            f"has only {n_rows} rows with a supervised token to cluster; use at most {n_rows}"
        )
    return k
