"""energy-pipeline: France's open electricity and gas consumption data, complete and validated."""

import os

# The pipeline's own module loggers (retries, drift warnings) belong in Prefect's run logs too.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "flows")
