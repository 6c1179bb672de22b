"""The sans-I/O RUDP engine: Go-Back-N sender and receiver, RTO estimation, AIMD."""
