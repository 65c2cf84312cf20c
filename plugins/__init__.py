"""Main plugins: each module is one plugin type, its whole life read top to bottom."""
