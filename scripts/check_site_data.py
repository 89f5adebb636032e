"""Check a site's data before joining a federation: counts, modality/vendor mix, spacing, intensities, bad files.

    python scripts/check_site_data.py --config /path/to/oncofl_site.json [--headers-only] [--json]

Exit code 0 when every case is readable, 1 otherwise. The printed report names files (it is for the site's IT);
``--json`` prints only the aggregate summary, which holds no path and no patient identifier.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "custom"))

from oncofl.datacheck import check_site  # noqa: E402
from oncofl.errors import OncoFLError  # noqa: E402
from oncofl.site_config import load_site_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the site's oncofl_site.json")
    parser.add_argument("--site", default="", help="the FLARE client name (checked against site_name)")
    parser.add_argument("--headers-only", action="store_true", help="skip pixel decoding (fast)")
    parser.add_argument("--json", action="store_true", help="print the aggregate summary as JSON")
    args = parser.parse_args(argv)
    try:
        config = load_site_config(args.config, site_name=args.site)
    except OncoFLError as e:
        print(e.local_message(), file=sys.stderr)
        return 2
    report = check_site(config, decode=not args.headers_only)
    print(json.dumps(report.summary(), indent=2) if args.json else report.local_text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
