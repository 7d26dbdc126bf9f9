"""MongoDB access: the client, indexes, leases, windowed reads (no domain decisions)."""
