"""Frozen entry point of the launcher (`/opt/cni/bin/<type>` links here): see pycni.launch."""

from pycni.launch import main

main()
