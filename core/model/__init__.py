"""Model memory: model specs, hardware targets, the roofline simulator and offload planning."""
