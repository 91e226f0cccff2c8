"""dbt: its models as Undertow models, and Undertow's syncs as dbt exposures.

Everything here reads dbt's artifacts (``target/manifest.json``, ``target/catalog.json``);
dbt itself is never imported or run. See docs/dbt.md.
"""
