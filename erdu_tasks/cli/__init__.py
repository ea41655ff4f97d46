"""The erdu command line: an entry point. Each command group is a module of its own.

May import anything below it: tasks, roles, store, escalation, devstack.
"""
