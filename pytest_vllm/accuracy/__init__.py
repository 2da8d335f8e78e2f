"""Accuracy gates for a compressed checkpoint against its base model.

* task accuracy on small eval sets kept in the repo (``pytest_vllm/data/evals``), scored on both
  servers at once, and recovery (compressed / base) with a paired Wilson interval;
* logprob agreement on a stored corpus (top-1 agreement, KL divergence, perplexity ratio) and a
  greedy-generation top-k check;
* the base model's scores as baselines, so a release run also gates the base against its history;
* lm-eval's ``local-completions`` backend on the same servers, folded into the same budgets.

Nothing here imports vllm, torch, transformers or lm_eval at import time.
"""
