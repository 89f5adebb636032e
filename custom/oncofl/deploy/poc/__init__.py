"""Rehearse a deployment on one workstation: a real FLARE POC (server + 3 hospitals + admins, mTLS on localhost).

    oncofl poc demo                      # prepare -> start -> submit -> wait -> download -> stop, timed
    oncofl poc prepare [--gpus hospital-a=0 hospital-b=1]
    oncofl poc start | status | stop | clean
    oncofl poc submit [--job NAME|FOLDER] [--via console|cli|api] [--gpus-per-site 1]
    oncofl poc wait JOB_ID | download JOB_ID
    oncofl poc resume JOB_ID             # continue an interrupted job from its last global model
    oncofl poc start-site hospital-c     # restart one participant from its kit

Everything lives under one root (default ``poc/workspace``): ``nvflare/`` (the POC workspace, i.e.
``NVFLARE_POC_WORKSPACE``), ``data/`` (synthetic DICOM for the three hospitals, made if absent) and ``results/``.
The POC's project and each hospital's data config come with the package (``oncofl/deploy/poc_project/``); the data
config is written into the kit's ``local/oncofl_site.json``. The job carries no paths and no code: every participant
runs the oncofl installed in this environment. ``--port`` gives the POC its own port so tests and a second POC never
collide.

Submission works three ways, all through the lead admin's kit: the admin console (``fl_admin.sh`` fed
``submit_job``), ``nvflare job submit``, and the Session API. GPU requirements are written per site name into the
submitted copy's ``meta.json`` (``nvflare job submit`` rewrites ``@default`` and would drop them).

Processes: ``start`` launches the kits in a session of its own and records each participant's supervisor loop and
FLARE process (PID, start time, exact command line) only when it is a member of that session; ``stop`` asks FLARE to
shut down, waits for the recorded processes still alive under the same identity and their descendants, and kills
by PID only what is left of those. A PID file or a command line naming the kit proves nothing.
"""

# The POC, one job per module:
#   layout.py      its definition (project, names, port) and what `prepare` writes into the kits
#   controller.py  Poc: prepare, start and stop the POC (`nvflare poc ...`); process records, admin and jobs come from
#                  oncofl.deploy.deployment.Deployment, which a provisioned consortium uses too
#   rehearsal.py   `oncofl poc demo`: the whole rehearsal, timed
#   cli.py         `oncofl poc ...`: the options and one small function per command
# The shared parts are in oncofl.deploy: workspace.py (folders, environment, who is who), processes.py (start, record
# and end only our processes), admin.py (sessions, console), job_control.py (submit, wait, resume, download).

from ..job_control import DEFAULT_JOB, JobInterrupted, JobResults
from ..processes import LEDGER, start_kit
from ..resume import RESUME_CHECKPOINT
from ..workspace import PocError
from .cli import main
from .controller import Poc
from .layout import (
    DEFAULT_PORT,
    DEFAULT_ROOT,
    LEAD,
    ORG_ADMIN,
    POC_PROJECT,
    PROJECT,
    PROJECT_ADMIN,
    PROJECT_FILE,
    SERVER,
    SITE_CONFIGS,
    SITES,
)
from .rehearsal import demo

__all__ = [
    "DEFAULT_JOB",
    "DEFAULT_PORT",
    "DEFAULT_ROOT",
    "LEAD",
    "LEDGER",
    "ORG_ADMIN",
    "POC_PROJECT",
    "PROJECT",
    "PROJECT_ADMIN",
    "PROJECT_FILE",
    "RESUME_CHECKPOINT",
    "SERVER",
    "SITES",
    "SITE_CONFIGS",
    "JobInterrupted",
    "JobResults",
    "Poc",
    "PocError",
    "demo",
    "main",
    "start_kit",
]
