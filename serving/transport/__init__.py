"""Transports: thin adapters converting gRPC protos and REST JSON to the model layer's calls."""
