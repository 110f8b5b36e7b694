"""Shared library of pero-worker: wire formats, ZooKeeper layout, configuration and transport clients.

This is the only package that imports pika, kazoo and paramiko.
"""
