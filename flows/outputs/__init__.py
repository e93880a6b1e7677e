"""Outputs built from the published gold tables: the dashboard, Tableau extracts and the
run's report artifacts."""
