"""oncofl: federated learning for oncology imaging -- NVIDIA FLARE jobs training MONAI models at each hospital.

Installed once at every site and at the server (``pip install oncofl-<version>.whl``); job folders carry settings
only and name the version they were built for (:mod:`oncofl.provenance`).
"""

__version__ = "0.2.0"
