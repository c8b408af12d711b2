"""Operator tools: an application on top of the shared library and the services."""
