"""Running syncs at the right time: schedules, ``after`` dependencies, upstream signals
(dbt, webhooks), freshness checks, SLAs, ``then`` actions and alerts.

The modules here know nothing of the CLI or the web app; the scheduler calls the
:class:`undertow.project.Project` facade only. This ``__init__`` stays import-light: the
config models import :mod:`undertow.orchestration.config` from here.
"""
