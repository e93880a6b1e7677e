"""Sources: the portals' datasets (catalog), one HTTP layer, one client per portal protocol,
validation, bounded-memory dedup, and the ingestion of one partition into the lake."""
