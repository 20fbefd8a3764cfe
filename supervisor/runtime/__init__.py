"""Async orchestration: the daemon, one monitor task per run, the reconciler, the control
handler. Works through ports (the AWS adapter's methods, the store); never boto or sqlite."""
