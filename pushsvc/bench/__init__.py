"""``pushsvc bench``: a load generator and report for pushsvc's transports.

Scenarios (each per transport): ``fanout`` (N subscribers on one channel, K events:
deliveries/s, completeness, server CPU per delivery), ``latency`` (N subscribers, R
events/s for T s: publish->receive percentiles), ``connections`` (C idle connections:
server RSS per connection, idle CPU), ``resume`` (a subscriber misses M events and
resumes: replay rate, time to caught-up), ``publish`` (HTTP publish throughput, single
and batch). See ``docs/benchmarks.md``.

The command is ``pushsvc.bench.cli.bench``; this package imports nothing itself, so that
its modules importing one another (``from pushsvc.bench import proc``) make no cycle
through the command, and ``pushsvc.cli`` loads the bench (rich, httptools: the
``[bench]`` extra) only when ``pushsvc bench`` runs.
"""
