"""The sans-I/O RUDP engine: Go-Back-N sender and receiver, loss recovery, AIMD.

No module here imports socket, time, threading, select or random: every
entry point takes ``now`` and returns datagrams and deadlines, so the socket
loops in :mod:`stacklab.services` stay thin and the simulator can run the
same code in virtual time.

* :mod:`.options` — what a stacklab client negotiates in its SYN (JSON + CRC32C);
* :mod:`.recovery` — RTT estimation (RFC 6298), Karn, RTO and probe timers, duplicate
  ACKs and recovery episodes; :mod:`.congestion` / :mod:`.aimd` — the window;
* :mod:`.sender` / :mod:`.receiver` — Go-Back-N data phase and reassembly;
  :mod:`.source` / :mod:`.sink` — where the sender pulls its chunks from and
  where the receiver puts them (in memory, or streamed without holding them);
* :mod:`.server` / :mod:`.client` — one whole exchange each side
  (``receive_datagram``, ``datagrams_to_send``, ``get_timer``, ``handle_timer``,
  ``next_event``); :mod:`.handshake` — stateless SYN answers for the server;
* :mod:`.events` — qlog-style events; :mod:`.integrity` — CRC32C trailer, SHA-256.

The simulator that drives it in virtual time lives apart, in :mod:`stacklab.sim`.
"""
