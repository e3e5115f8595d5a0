"""procfleet master: reads a batch, serves it to workers under leases, writes each result once."""
