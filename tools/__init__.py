"""The operator tools' logic (`pero_worker.tools`): the scripts in scripts/ are thin entry points to it.

cli.py holds what every tool shares (connection options, one-line errors, exit codes); each tool is one
module with a `main(argv)`, importable and tested without a subprocess.
"""
