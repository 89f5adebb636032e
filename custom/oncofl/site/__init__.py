"""The site runtime: what one hospital does with a job, behind FLARE's executor.

* :mod:`.settings` -- the job's training settings, one frozen object that travels by value (executor, trainer,
  helper ranks);
* :mod:`.hooks` -- each algorithm's site side (FedProx, SCAFFOLD, DP-SGD, FedBN, optimizer-state reset, learning-rate
  schedule) as a small object with one interface that the trainer and the runtime call;
* :mod:`.runtime` -- site config -> data check -> datalist -> cached, preprocessed splits -> device -> trainer, and one
  round of training / validation on them. The executor (:mod:`oncofl.executor`) only translates FLARE's tasks.
"""

from .settings import TrainSettings

__all__ = ["TrainSettings"]
