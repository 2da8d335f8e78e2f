"""The performance gate: measure load on a server, compare with the baseline of this host class,
gate with tolerances from the measured noise.

Modules, one job each (the data path: runs → metrics → results → judge → gate → report):

- ``metrics``  a repetition's records → metrics, with ``vllm bench serve``'s definitions
- ``resolution``  the noise model: tolerance floors and the regression each budget resolves
- ``budgets``  perf budgets on the shared core (``pytest_vllm.gating``), and ``evaluate``
- ``results``  measurements, pair comparisons, the session's state: what gate, judge and report share
- ``judge``  pure functions: the baseline met, the checks, invalid runs, missing baselines, failure text
- ``gate``  the ``vllm_bench`` object: the pytest layer that fails, skips or records
- ``report``, ``plots``  the report section: tables, results.json data, PNG plots
- ``plugin``  markers, the fixture, the state under its stash key
"""
