"""Day-2 operations on the installed cluster: the failover drill and its measuring, the planned switchover."""
