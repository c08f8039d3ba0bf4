"""The farm's queue and placement, without Ray.

  jobs.py       the Job record and its states
  store.py      the durable queue (SQLite)
  residency.py  what a worker holds in VRAM / pinned RAM / disk; load-cost estimates
  queues.py     queued jobs grouped by batch key, with the totals placement reads
  batching.py   forming one batched call from jobs with equal batch_key
  fleet.py      the dispatcher's view of its workers, with indexes
  replicas.py   demand-sized replica plans
  placement.py  placement policies: the farm's and three baselines
  core.py       DispatcherCore, what the Ray Dispatcher actor wraps
  costs.py, trace.py, simulate.py   `farm simulate`: the real code on a simulated clock
"""
