"""procfleet worker: connects to a master, leases batches of tasks, runs them, reports results."""
