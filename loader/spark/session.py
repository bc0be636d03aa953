"""The SparkSession a `quiver load --engine spark` run uses, when the caller does not bring its own.

Executors run the loader's own encoders, so they need this package and rocksdict: PYSPARK_PYTHON is
this interpreter (on a cluster, the image's or a shipped venv's, see deploy/spark/). Timestamps cross
the Arrow boundary in UTC, the snapshot's zone. Spark's event log goes to a folder so a run's stage
timings can be read back (bench/spark_stages.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[2]"


def spark_session(master: str = DEFAULT_MASTER, *, app_name: str = "quiver-load", driver_memory: str = "1g",
                  event_log_dir: str | None = None, conf: dict[str, str] | None = None) -> SparkSession:
    """A session for one load. `event_log_dir` defaults to a fresh temporary folder (reported by
    `event_log_dir(session)`); `conf` entries win over the defaults here."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    log_dir = event_log_dir or tempfile.mkdtemp(prefix="quiver-spark-events-")
    os.makedirs(log_dir, exist_ok=True)
    settings = {
        "spark.driver.memory": driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": "file://" + os.path.abspath(log_dir),
        # the loader's batches are already sized (rows at a time); Arrow batches of that size
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(1 << 14),
        # encoded values can be large; Spark 4 hands Arrow large_binary to mapInArrow when asked
        "spark.sql.execution.arrow.useLargeVarTypes": "false",
        "spark.sql.adaptive.enabled": "false",
        "spark.python.worker.reuse": "true",
        "spark.driver.extraJavaOptions": "-Dlog4j2.level=ERROR",
    }
    settings.update(conf or {})
    builder = SparkSession.builder.master(master).appName(app_name)
    for k, v in settings.items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def event_log_dir(session: SparkSession) -> str:
    """The folder the session's event log is written to (a file:// URI's path)."""
    d = session.sparkContext.getConf().get("spark.eventLog.dir", "")
    return d.removeprefix("file://")
