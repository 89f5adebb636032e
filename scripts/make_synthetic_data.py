"""Write the deterministic multi-site synthetic prostate MRI data set (real DICOM series + NIfTI masks).

python scripts/make_synthetic_data.py --out data/synthetic             # small, for CI and the quickstart
python scripts/make_synthetic_data.py --out /data/syn --realistic --case-factor 20   # 384x384x24-class, ~500 cases
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "custom"))

from oncofl.synthetic import SITE_PROFILES, generate  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic", help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sites", nargs="+", default=list(SITE_PROFILES), choices=list(SITE_PROFILES))
    parser.add_argument("--realistic", action="store_true", help="clinical matrix sizes (384x384x24 class)")
    parser.add_argument("--case-factor", type=float, default=1.0, help="multiply every site's case count")
    parser.add_argument("--holdout-per-vendor", type=int, default=3)
    args = parser.parse_args(argv)
    out = generate(
        args.out,
        seed=args.seed,
        sites=tuple(args.sites),
        realistic=args.realistic,
        case_factor=args.case_factor,
        holdout_per_vendor=args.holdout_per_vendor,
    )
    print(f"synthetic data written to {out} (site configs in {out / 'site_configs'})")
    return out


if __name__ == "__main__":
    main()
