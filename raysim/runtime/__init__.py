"""Everything that touches Ray: the coordinator actor, device-host actors, the driver loop."""
