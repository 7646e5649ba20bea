"""Integrations with model libraries (recognised without importing them)."""
