"""A run's identity: the resolved configuration that is hashed into its key."""
