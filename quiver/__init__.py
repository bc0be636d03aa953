"""quiver: one versioned snapshot per data version, served online over gRPC and read offline for training."""
