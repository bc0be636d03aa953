"""Building snapshot versions on Spark (`pip install quiver-features[spark]`, Java 17).

    from quiver.loader.spark import build_version, spark_session
    spark = spark_session("local[2]")            # or the job's own SparkSession
    build_version(spark, "features.yaml", None, "snapshots/")      # or "s3://bucket/prefix"

The result is the version `quiver load` builds from the same inputs: same keys, values, offline rows,
manifest and version id. pyspark is imported only when a session is made or a job runs.
"""

from quiver.loader.spark.build import build_version, load
from quiver.loader.spark.session import event_log_dir, spark_session

__all__ = ["build_version", "event_log_dir", "load", "spark_session"]
