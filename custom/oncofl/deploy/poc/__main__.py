"""``python -m oncofl.deploy.poc``: the same as ``oncofl poc``."""

import sys

from .cli import main

sys.exit(main())
