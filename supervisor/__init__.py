"""Training-run supervisor for AWS EC2.

Not Supervisor the process manager: this package shares its import name and command names
(`supervisord`, `supervisorctl`) but is distributed as `ec2-run-supervisor`.
"""

__version__ = "0.1.0"
