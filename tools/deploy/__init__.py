"""Deployment helpers behind scripts/system_setup.py.

Split by concern: `render` (pure text of every generated file), `pki`
(certificates and key stores), `secrets_store` (passwords on disk), `native`
(starting/stopping the engines on this host) and `postconfig` (users, vhost,
server lists once the engines run).  Nothing here is imported by the daemons.
"""
