"""sriov: an SR-IOV virtual function of the node lent to a pod (see plugin.py)."""
