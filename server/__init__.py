"""The inference server: Pub/Sub requests in, batched jitted predictions out."""
