"""Deployment: the one-workstation POC rehearsal (:mod:`.poc`), provisioning the consortium's kits
(:mod:`.provision`, :mod:`.builders`), and a hospital's own steps with its kit (:mod:`.site`, :mod:`.kit_install`).
Command line: ``oncofl poc ...``, ``oncofl provision ...``, ``oncofl site ...``."""
