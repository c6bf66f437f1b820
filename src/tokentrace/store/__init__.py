"""Where spans are written and read: one PostgreSQL database, embedded or yours.

* :func:`tokentrace.store.connection.resolve_dsn` picks the database
  (argument > ``TOKENTRACE_DSN`` > libpq ``PG*`` variables > embedded server).
* :mod:`tokentrace.store.migrate` applies the numbered SQL files in ``tokentrace/sql``.
* :class:`tokentrace.store.writer.SpanWriter` is the one place rows are written.
"""
