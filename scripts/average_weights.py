#!/usr/bin/env python
r"""Average the weights of two bundles of the same network (a "model soup").

Networks fine-tuned from the same weights usually lie in one basin of the loss, and the average
of their weights often keeps the strengths of both [1]_. This writes a bundle whose network
weights are ``(1 - alpha) * A + alpha * B``, with B's metadata (post-processing, scale, heads)
and a note of the average in ``training.data``; ``--set key=value`` changes post-processing
settings (JSON values)::

    python scripts/average_weights.py models/default runs/apart/bundle --alpha 0.5 \
        --out runs/soup/bundle --set min_confidence=0.9

The ONNX export is made again from the averaged network. A particle classifier is not averaged:
B's is kept when it has one.

References
----------
.. [1] M. Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves
       accuracy without increasing inference time", ICML 2022.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path


def average(weights_a: list, weights_b: list, alpha: float) -> list:
    """Return ``(1 - alpha) * a + alpha * b`` for each pair of weight arrays.

    Examples
    --------
    >>> import numpy as np
    >>> average([np.zeros(2)], [np.full(2, 4.0)], 0.25)[0].tolist()
    [1.0, 1.0]
    """
    if len(weights_a) != len(weights_b) or any(a.shape != b.shape for a, b in zip(weights_a, weights_b)):
        raise ValueError("the two networks differ in their layers or weight shapes")
    return [(1 - alpha) * a + alpha * b for a, b in zip(weights_a, weights_b)]


def main(argv=None) -> int:
    """Write the bundle with the averaged weights; one line and exit status 2 on bad input."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="bundle A (folder, zip or installed name)")
    ap.add_argument("b", help="bundle B, of the same network; its metadata is kept")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of B (default 0.5)")
    ap.add_argument("--out", type=Path, required=True, help="the new bundle folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a post-processing setting")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from particleseg.errors import ParticlesegError
    from particleseg.models import load_bundle, save_bundle

    if not 0 <= args.alpha <= 1:
        ap.error(f"--alpha {args.alpha:g}: give a weight from 0 to 1")
    try:
        a, b = load_bundle(args.a), load_bundle(args.b)
        if a.metadata["network"] != b.metadata["network"]:
            raise ValueError(f"{args.a} and {args.b} hold different networks; only the same network can be averaged")
        meta = copy.deepcopy(b.metadata)
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or key not in meta["postprocess"]:
                raise ValueError(f"--set {item}: give KEY=VALUE with a post-processing key of {args.b}")
            try:
                meta["postprocess"][key] = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"--set {item}: {value!r} is not a number, true/false or a JSON value") from None
        net_b = b.model
        net_b.set_weights(average(a.model.get_weights(), net_b.get_weights(), args.alpha))
        meta.pop("exports", None)
        meta.setdefault("training", {})
        meta["training"]["data"] = (
            f"{meta['training'].get('data', '')}; weights averaged: {1 - args.alpha:g} x {args.a} + "
            f"{args.alpha:g} x {args.b} (scripts/average_weights.py)"
        ).lstrip("; ")
        save_bundle(args.out, net_b, meta, classifier=b.classifier, overwrite=args.overwrite, zip_copy=False)
    except (ParticlesegError, ValueError) as exc:
        print(f"average_weights: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {1 - args.alpha:g} x {args.a} + {args.alpha:g} x {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
