"""`make bench`: full proxy against bare aiohttp baselines, measured in one run.

Every server under test runs in its own process; the load generator (wrk, or
:mod:`bench.loadgen` when wrk is missing) runs in another. See :mod:`bench.run`.
"""
