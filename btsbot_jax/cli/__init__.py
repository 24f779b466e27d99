"""Command-line entry points (absl flags). Library code never defines flags, so modules import freely."""
