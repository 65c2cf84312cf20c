"""Frozen entry point: one program for every plugin name."""

from pycni.main import main

main()
