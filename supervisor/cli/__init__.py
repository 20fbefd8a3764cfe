"""Command-line entry points: `supervisord` (the daemon) and `supervisorctl` (the client).

Exit codes: 0 success, 1 error (one line saying why), 2 usage.
"""
