"""Adapters: the only code that touches AWS, SQLite, sockets and subprocesses.

Library exceptions are translated here into `supervisor.core.errors`.
"""
