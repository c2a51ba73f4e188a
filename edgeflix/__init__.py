"""Edgeflix shared package: config, logging, CLI plumbing and formats every component uses.

Components (origin, appliance, fleet, services) import this package and never each other.
"""

__version__ = "0.1.0"
