"""multus: multi-homed pods, one delegate per network selected by the pod's annotations."""
