"""kbpg: install and check a highly available PostgreSQL cluster over SSH."""

__version__ = "0.1.0"
