"""Every step from a device's update to the new global model: exact partial sums, per-element
aggregation, staleness weights and the server optimizers."""
