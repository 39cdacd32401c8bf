"""Interpolate two DiT checkpoints' weights (WiSE-FT): ``lpm.models.soup.interpolate_dits``.

    PYTHONPATH=scripts python scripts/weight_soup.py FIRST SECOND --alpha 0.5 --out OUT

OUT = (1 - alpha) * FIRST + alpha * SECOND, with SECOND's config, sampling settings and restorer.
"""

from __future__ import annotations

import argparse
import sys

from lpm.errors import LpmError
from lpm.models.soup import interpolate_dits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first", help="the checkpoint fine-tuning started from (e.g. the shipped Online model)")
    p.add_argument("second", help="its fine-tune (same network)")
    p.add_argument("--alpha", type=float, required=True, help="share of the second's weights, 0..1")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        path = interpolate_dits(args.first, args.second, args.alpha, args.out)
    except LpmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}: {1 - args.alpha:g} x {args.first} + {args.alpha:g} x {args.second}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
