"""A self-contained demo: the real daemon and CLI against a local moto server standing in for
AWS, with four simulated training runs (`python -m supervisor.demo --help`)."""
