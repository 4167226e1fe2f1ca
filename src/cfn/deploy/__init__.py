"""Deployment files generated from settings: compose files (Dockerfiles live in deploy/)."""
