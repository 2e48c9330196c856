"""Runtime guard: request and response checks in front of a deployed model."""
