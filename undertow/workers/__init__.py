"""Running syncs on many machines: Celery workers on Redis or RabbitMQ, state in PostgreSQL.

    config.py    ``executor:`` in undertow.yml
    executor.py  where runs happen: in-process (default) or queued to Celery workers
    app.py       the Celery app and its settings (acknowledgement, visibility, prefetch)
    tasks.py     the task bodies: claim from the ledger, run, finish or hand back
    sweeper.py   pickup: tasks whose worker died are published again
    leader.py    one scheduler among several ``serve`` (a lease in the state store)
    worker.py    ``undertow worker``: registration, heartbeats, signals, metrics
    budget.py    rate budgets shared across processes, kept in Redis

Importing this package imports no Celery: only the modules that need it do.
"""
