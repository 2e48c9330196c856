"""The guard in front of a third-party model API: an OpenAI-compatible LLM proxy (``mlwarden serve --upstream``).

One policy covers own and third-party models: registry tokens and per-client rate limits, token and cost
budgets, prompt-injection screening of the messages, PII/secret masking of completions (streamed ones included,
incrementally), a system-prompt leakage check, monitoring and an audited decision per request. See
``docs/llm-proxy.md``. Modules: :mod:`.settings` (the policy's ``proxy:`` section), :mod:`.stream` (incremental
masking), :mod:`.budget`, :mod:`.upstream` (httpx, retries, credentials), :mod:`.model_screen` (a local ONNX
classifier), :mod:`.outputs` (tool-call arguments and logprob tokens), :mod:`.monitor` (traffic monitoring off the
request path), :mod:`.playbooks` and :mod:`.control` (what alerts and admins change), :mod:`.shared` (budgets and
holds in memory or in Redis), :mod:`.service` (the decisions) and :mod:`.app` (the HTTP face).
"""
