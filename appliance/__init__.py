"""Appliance: the edge daemon that keeps titles on tiered disks and serves them with sendfile."""
