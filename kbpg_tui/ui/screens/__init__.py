"""The wizard's screens, one module each."""
