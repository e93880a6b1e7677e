"""Gold: the table contract (tables, pure Python, shipped to the Spark job), the Spark
runner and the aggregation step that publishes what the job staged."""
