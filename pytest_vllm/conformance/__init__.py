"""OpenAI API conformance of a server: strict validators, hypothesis strategies, replay and reports.

Modules, one job each (nothing heavy is imported here, so the plugin stays fast to load):

- ``deviations``  what a check finds (a ``Deviation``) and the known deviations of vLLM itself
- ``openai_schema``  required fields and types, derived from openai-python's response types
- ``validators``  responses, SSE streams and error bodies checked against the contract
- ``probe``  raw HTTP exchanges with a server (the SDK would hide malformed JSON)
- ``replay``  a failing request as JSON and as a curl line
- ``strategies``  hypothesis strategies for valid and invalid requests
- ``profiles``  the bounded CI and the thorough nightly hypothesis settings
- ``ledger``  per property and server: examples tried and the verdict, as a report section
"""

from __future__ import annotations
