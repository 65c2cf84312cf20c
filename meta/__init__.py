"""Meta plugins: delegating and chained plugins."""
