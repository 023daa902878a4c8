"""The trace-driven simulator."""
