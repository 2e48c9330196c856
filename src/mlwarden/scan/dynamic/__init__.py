"""Lifecycle-aware dynamic analysis: run each phase of loading a model in a sandbox, compare with the norm.

What each phase did to the host is compared with what the framework normally does in that phase.

Phases: ``import`` (the framework), ``deserialize`` (the file), ``instantiate`` (obtain the model object),
``infer`` (one forward pass on an input synthesised from the model's own metadata). Every phase runs inside
a bubblewrap sandbox (no network, read-only system, private tmpfs, rlimits, wall-clock limit), watched from
inside by Python audit hooks (PEP 578) and from outside by a syscall tracer (strace), so native code paths
are seen as well as Python ones. See :mod:`.sandbox`, :mod:`.runner`, :mod:`.profiles` and :mod:`.engine`.
"""
