"""The ways into the data plane (deployments/dataplane.py): each module only parses and encodes."""
