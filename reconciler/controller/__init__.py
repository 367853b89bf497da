"""The reconcile loop, one room per job:

::

    queue.py     the work queue, its per-key rate limiter, the workers, the typed Result
    observe.py   desired and observed views from the stores and the runtimes
    recorder.py  deployment, job and event rows, status writes
    pipeline.py  one executor per planned step, inside one deployment
    loop.py      Controller: reconcile() = observe -> plan -> execute; adoption, resync, health
"""

from reconciler.controller.loop import Controller

__all__ = ["Controller"]
