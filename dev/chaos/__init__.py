"""The fault-injection suite (make chaos, make chaos-short): see dev/chaos/run.py."""
