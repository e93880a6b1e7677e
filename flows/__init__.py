"""energy-pipeline: France's open electricity and gas consumption data, complete and validated."""

import os
import warnings

# The pipeline's own module loggers (retries, drift warnings) belong in Prefect's run logs too.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "flows")

# Importing pandera imports pyspark.pandas when pyspark is installed, which sets these two
# variables in our environment; spark-submit must get the user's own values, not pandera's.
USER_SPARK_ENV = {
    name: os.environ.get(name) for name in ("SPARK_LOCAL_IP", "PYARROW_IGNORE_TIMEZONE")
}

# pyspark.pandas (which this project does not use) warns about pandas 3 on import.
warnings.filterwarnings(
    "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
)
