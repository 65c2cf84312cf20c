"""host-local IPAM: addresses from ranges, kept as files on the node (the reference's format)."""
