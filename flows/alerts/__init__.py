"""Alerts: where a failed run is said (Slack, by block name)."""
