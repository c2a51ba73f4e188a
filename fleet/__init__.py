"""Fleet manager: the control plane (registry, steering, fill planning, key rotation)."""
