"""The operator's web console (issue 13): live stages, workers, watchdog plan, failures and dead letters,
with the actions worker_controller.py and dead_letters.py offer, behind the deployment's login."""
