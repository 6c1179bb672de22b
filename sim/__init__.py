"""The RUDP simulator: an impaired network in virtual time, scenarios, invariants.

Kept out of the sans-I/O engine (:mod:`stacklab.transport`), which it drives:

* :mod:`.impairment` — the seeded link model shared with ``stacklab chaos``;
* :mod:`.network` — two impaired links and an event queue in virtual time;
* :mod:`.scenarios` — drawing a network, file, options and peer from a seed;
* :mod:`.checker` — the invariants, checked after every event;
* :mod:`.runner` — one run over the production server path, and many on a pool.
"""
