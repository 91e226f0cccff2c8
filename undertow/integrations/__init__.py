"""Running syncs from the orchestrators users already have: Airflow and Dagster.

Both run a sync in-process (``project_dir=``) or trigger it on ``undertow serve`` over HTTP
and wait (``url=`` and ``token=``), and fail the task when the sync fails. Install with
``pip install "undertow[airflow]"`` or ``pip install "undertow[dagster]"``.
"""
