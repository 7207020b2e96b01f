"""export-batch: the nightly incremental export of loyalty data for Optimove.

``export`` runs it: it picks the datasets, checks the deadline, takes the lock and hands
the work to a pipeline: ``local`` (DuckDB, from a database or a folder of extracts, read
through ``source``) or ``snowflake`` (in the warehouse). Both build each dataset's typed
SQL with ``plan`` and its delta against the last export with ``delta``; ``state`` keeps
the local fingerprints, ``memory`` DuckDB's per-step budgets, ``writer`` publishes files,
manifest and ``_SUCCESS``, and ``result`` holds what the run did. The contract for users
and scripts is docs/batch.md.
"""

from optisync.batch.export import export_batch
from optisync.batch.result import BatchSummary, DatasetResult, raise_for_batch

__all__ = ["BatchSummary", "DatasetResult", "export_batch", "raise_for_batch"]
