"""Outputs: the result records and their writers, and annotated copies of the inputs."""
