"""flannel: the default pod network. The CNI plugin (`plugin`) and the node agent (`agent`).

The agent leases the node a subnet of the cluster network from a subnet store (`store`),
programs the backend (VXLAN or host-gw routes to every peer) and writes `subnet.env`; the
plugin reads `subnet.env` and delegates every pod to bridge + host-local.
"""
