"""Data: reading files, designs, checks, reductions to sufficient statistics."""
