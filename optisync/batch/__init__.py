"""export-batch: the nightly incremental export of loyalty data for Optimove (design.md §6).

``source`` reads the data (DuckDB database or a folder of CSV/Parquet extracts), ``plan``
turns the config into typed SQL per dataset, ``state`` keeps the row fingerprints of the
last successful export, ``writer`` publishes files, manifest and ``_SUCCESS``, and
``export`` ties them together behind ``export_batch``.
"""

from optisync.batch.export import BatchSummary, DatasetResult, export_batch, raise_for_batch

__all__ = ["BatchSummary", "DatasetResult", "export_batch", "raise_for_batch"]
