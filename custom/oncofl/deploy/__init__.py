"""Deployment: the one-workstation POC rehearsal (:mod:`.poc`), provisioning the consortium's kits
(:mod:`.provision`, :mod:`.builders`), and a hospital's own steps with its kit (:mod:`.site`, :mod:`.kit_install`).
Command line: ``oncofl poc ...``, ``oncofl provision ...``, ``oncofl site ...``.

The POC and a provisioned consortium rehearsed here are both a :class:`~.deployment.Deployment`: a workspace
(:mod:`.workspace`: folders, environment, who is who) with the processes started from its kits (:mod:`.processes`),
its admin side (:mod:`.admin`) and its jobs (:mod:`.job_control`, :mod:`.resume`)."""
