"""stacklab.tools: the tools around the stack.

The chaos proxy (impairs UDP like netem, without root), the probe (malformed
packets against a server, liveness after each), capture control (dumpcap in a
private network namespace, the scenarios behind ``stacklab capture`` and
``stacklab demo``) and the transfer benchmark.
"""
