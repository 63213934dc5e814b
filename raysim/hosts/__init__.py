"""The pure-torch workers that train devices (pooled hosts, a dedicated device, the in-process
backend) and their memory caps and CUDA set-up. No Ray: `raysim.runtime` wraps them in actors."""
