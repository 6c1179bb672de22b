"""The stack's servers and clients on plain sockets (thin loops around sans-I/O logic)."""
