"""Which examples does a within-source method favour? Gradient norm of the picks vs the pool.

A method that makes the coreset's mean close to the pool's in a feature space can do it by
picking rows with small gradients (when the budget is under half a source's rows and the
per-example variation is high-dimensional noise, the closest mean is the one made of small
terms): it then trains on the easy examples and under-trains on the hard ones, whatever its
per-step fidelity. This measures it: on tiny-lab pools (the setup of benchmarks/fidelity.py,
after 100 training steps), the mean full-model gradient norm (of the per-example mean token
loss) of the large-source rows each method picks, divided by that of all large-source rows of
the pool. Unbiased draws give 1.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/selection_bias.py \
        --out benchmarks/results/selection_bias.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fidelity  # noqa: E402  (the tiny lab and its ground-truth gradients)

from colm import CoresetConfig, CoresetSelector  # noqa: E402

ARMS = {
    "stratified (random)": dict(within_source="random"),
    "facility_location, exact": dict(within_source="facility_location", feature="exact"),
    "facility_location, zo m=1": dict(within_source="facility_location", feature="zo"),
    "mean_match, exact, pool moment": dict(within_source="mean_match", feature="exact", adam_second_moment="pool"),
    "cluster_sample, exact": dict(within_source="cluster_sample", feature="exact"),
    "pps, exact": dict(within_source="pps", feature="exact"),
    "balanced, exact": dict(within_source="balanced", feature="exact"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100, help="training steps before measuring")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lab_args = argparse.Namespace(lab="tiny", max_length=128, seed=args.seed, lr=1e-3, train_batch=32, pool=64)
    lab = fidelity.TinyLab(lab_args)
    lab.train_steps(args.steps, lab_args.train_batch)
    selectors = {k: CoresetSelector(CoresetConfig(selection_seed=args.seed, **v), lab.source_sizes) for k, v in ARMS.items()}
    ratios: dict[str, list[float]] = {k: [] for k in ARMS}
    for step in range(args.pools):
        pg = lab.gradients(lab.take(lab_args.pool))
        exact = torch.cat([pg.G[:, a:b] for a, b in lab.target_spans], 1) / pg.tokens[:, None]
        norms = (pg.G.double() / pg.tokens[:, None].double()).norm(dim=1)  # [pool]
        for name, sel in selectors.items():
            feats = None if not sel.config.needs_features else fidelity.features_for(
                "zo1" if sel.config.feature == "zo" else "exact", exact, sel.config, step)
            picked = sel.select(feats, pg.sources, lab_args.pool // 2).indices.tolist()
            small = set(sel.small_source_names)
            large = [i for i in range(lab_args.pool) if pg.sources[i] not in small]
            chosen = [i for i in picked if pg.sources[i] not in small]
            ratios[name].append(float(norms[chosen].mean() / norms[large].mean()))
    summary = {}
    for name, values in ratios.items():
        x = np.asarray(values)
        ci = fidelity.t_interval(x)
        summary[name] = ci
        print(f"| {name} | {ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}] |")
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "summary": summary,
                                    "per_pool": ratios}, indent=1) + "\n")


if __name__ == "__main__":
    main()
